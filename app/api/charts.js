// Line charts of a report's series (docs/api.md, "Series"), drawn as SVG by the page itself: no
// library, nothing from another origin. Inlined into each page that draws them (pages.py), so
// the pages' Content-Security-Policy allows exactly their own scripts by hash.
var Charts = (function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLOURS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];
  var WIDTH = 520, HEIGHT = 260, LEFT = 64, RIGHT = 16, TOP = 16, BOTTOM = 44;
  var DRAWN = 500;  // points drawn of a line at most: a chart 520 wide shows no more, and 200,000 hung the page
  var MARKED = 60;  // points marked with a dot at most (a dot per point of a long line is a smear)

  // Every step-th point, and the last: what is drawn of a long series (its bounds are the whole's).
  function thinned(points) {
    if (points.length <= DRAWN) { return points; }
    var step = Math.ceil(points.length / DRAWN), kept = [];
    for (var i = 0; i < points.length; i += step) { kept.push(points[i]); }
    if (kept[kept.length - 1] !== points[points.length - 1]) { kept.push(points[points.length - 1]); }
    return kept;
  }

  // Smallest and largest of a coordinate over every line: a loop (Math.min.apply overflows the stack).
  function bounds(lines, axis) {
    var low = Infinity, high = -Infinity;
    lines.forEach(function (line) {
      line.series.points.forEach(function (point) {
        if (point[axis] < low) { low = point[axis]; }
        if (point[axis] > high) { high = point[axis]; }
      });
    });
    return [low, high];
  }

  function node(name, attributes, text) {
    var element = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, String(attributes[key])); });
    if (text !== undefined) { element.textContent = text; }
    return element;
  }

  function label(value) {
    var magnitude = Math.abs(value);
    return magnitude >= 1000 ? value.toLocaleString("en", {maximumFractionDigits: 0})
      : String(Math.round(value * 100) / 100);
  }

  // A series is well-formed when its points are pairs of finite numbers: anything else is not drawn.
  function usable(series) {
    return series && typeof series.name === "string" && Array.isArray(series.points) && series.points.length > 0
      && series.points.every(function (point) {  // a loop over every point, once, before drawing
        return Array.isArray(point) && point.length === 2 && isFinite(point[0]) && isFinite(point[1])
          && typeof point[0] === "number" && typeof point[1] === "number";
      });
  }

  // One chart: lines = [{label, series}], the same name's series of one run or of several.
  function chart(title, lines) {
    var figure = document.createElement("figure");
    figure.className = "chart";
    figure.setAttribute("data-series", title);
    var caption = document.createElement("figcaption");
    caption.textContent = title;
    figure.appendChild(caption);
    var xb = bounds(lines, 0), yb = bounds(lines, 1);
    var x0 = xb[0], x1 = xb[1], y0 = Math.min(0, yb[0]), y1 = yb[1];
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { y1 = y0 + 1; }
    function px(x) { return LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT); }
    function py(y) { return HEIGHT - BOTTOM - (y - y0) / (y1 - y0) * (HEIGHT - TOP - BOTTOM); }
    var svg = node("svg", {viewBox: "0 0 " + WIDTH + " " + HEIGHT, width: WIDTH, height: HEIGHT, role: "img"});
    svg.appendChild(node("title", {}, title));
    svg.appendChild(node("line", {x1: LEFT, y1: py(y0), x2: WIDTH - RIGHT, y2: py(y0), stroke: "#718096"}));
    svg.appendChild(node("line", {x1: LEFT, y1: TOP, x2: LEFT, y2: HEIGHT - BOTTOM, stroke: "#718096"}));
    [[x0, "start"], [x1, "end"]].forEach(function (tick) {
      svg.appendChild(node("text", {x: px(tick[0]), y: HEIGHT - BOTTOM + 16, "text-anchor": tick[1], "font-size": 11},
                           label(tick[0])));
    });
    [y0, y1].forEach(function (value) {
      svg.appendChild(node("text", {x: LEFT - 6, y: py(value) + 4, "text-anchor": "end", "font-size": 11}, label(value)));
    });
    var first = lines[0].series;
    svg.appendChild(node("text", {x: (LEFT + WIDTH - RIGHT) / 2, y: HEIGHT - 8, "text-anchor": "middle", "font-size": 12},
                         String(first.x || "")));
    svg.appendChild(node("text", {x: 14, y: (TOP + HEIGHT - BOTTOM) / 2, "text-anchor": "middle", "font-size": 12,
                                  transform: "rotate(-90 14 " + (TOP + HEIGHT - BOTTOM) / 2 + ")"}, String(first.y || "")));
    lines.forEach(function (line, index) {
      var colour = COLOURS[index % COLOURS.length];
      var drawn = thinned(line.series.points);
      var path = drawn.map(function (p) { return px(p[0]).toFixed(1) + "," + py(p[1]).toFixed(1); });
      svg.appendChild(node("polyline", {points: path.join(" "), fill: "none", stroke: colour, "stroke-width": 2,
                                        "data-line": line.label, "data-drawn": drawn.length}));
      if (drawn.length <= MARKED) {
        drawn.forEach(function (p) {
          svg.appendChild(node("circle", {cx: px(p[0]), cy: py(p[1]), r: 3, fill: colour}));
        });
      }
    });
    figure.appendChild(svg);
    if (lines.length > 1 || lines[0].label) {
      var legend = document.createElement("div");
      legend.className = "legend";
      lines.forEach(function (line, index) {
        var entry = document.createElement("span");
        entry.style.color = COLOURS[index % COLOURS.length];
        entry.textContent = "\u25A0 " + line.label;
        legend.appendChild(entry);
      });
      figure.appendChild(legend);
    }
    return figure;
  }

  // Every series of the runs, one chart per name, each run's series of that name on it.
  // runs: [{label, report}]. Returns the number of charts drawn into container.
  function draw(container, runs) {
    container.textContent = "";
    var names = [];
    runs.forEach(function (run) {
      ((run.report && run.report.series) || []).filter(usable).forEach(function (series) {
        if (names.indexOf(series.name) < 0) { names.push(series.name); }
      });
    });
    names.forEach(function (name) {
      var lines = [];
      runs.forEach(function (run) {
        ((run.report && run.report.series) || []).filter(usable).forEach(function (series) {
          if (series.name === name) { lines.push({label: run.label, series: series}); }
        });
      });
      container.appendChild(chart(name, lines));
    });
    return names.length;
  }

  return {draw: draw};
})();
