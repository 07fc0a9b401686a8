// Line charts of a report's series (docs/api.md, "Series"), drawn by uPlot (vendored in
// vendor/uplot, its version and origin in its README.md): ticks, gridlines, drag to zoom
// (double-click to undo), and a read-out of the point under the pointer. Both scripts are
// inlined into each page that draws charts (pages.py), so the pages' Content-Security-Policy
// allows exactly their own scripts by hash; nothing comes from another origin.
var Charts = (function () {
  "use strict";
  var COLOURS = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];
  var WIDEST = 760;  // px: wider than that a chart of a few dozen points says no more
  var KEPT = 4000;   // points a line keeps at most (200,000 hung the page, and a chart shows a few hundred)
  var drawnCharts = [];  // the charts drawn: [{container, figure, plot}], destroyed when their container is drawn again

  // A series is well-formed when its points are pairs of finite numbers: anything else is not drawn.
  function usable(series) {
    return series && typeof series.name === "string" && Array.isArray(series.points) && series.points.length > 0
      && series.points.every(function (point) {  // a loop over every point, once, before drawing
        return Array.isArray(point) && point.length === 2 && isFinite(point[0]) && isFinite(point[1])
          && typeof point[0] === "number" && typeof point[1] === "number";
      });
  }

  // uPlot draws x in ascending order: points given in another order are sorted (a copy).
  function ascending(points) {
    for (var i = 1; i < points.length; i++) {
      if (points[i][0] < points[i - 1][0]) {
        return points.slice().sort(function (a, b) { return a[0] - b[0]; });
      }
    }
    return points;
  }

  // What is drawn of a long line: of each of KEPT / 2 runs of consecutive points, its lowest and
  // highest (in their order), and the first and last points: its shape, its peaks (the best price)
  // and its bounds survive, which every n-th point's would not.
  function thinned(points) {
    if (points.length <= KEPT) { return points; }
    var size = Math.ceil(points.length / (KEPT / 2)), kept = [points[0]];
    for (var start = 0; start < points.length; start += size) {
      var end = Math.min(start + size, points.length), low = start, high = start;
      for (var i = start + 1; i < end; i++) {
        if (points[i][1] < points[low][1]) { low = i; }
        if (points[i][1] > points[high][1]) { high = i; }
      }
      [Math.min(low, high), Math.max(low, high)].forEach(function (index) {
        if (kept[kept.length - 1] !== points[index]) { kept.push(points[index]); }
      });
    }
    if (kept[kept.length - 1] !== points[points.length - 1]) { kept.push(points[points.length - 1]); }
    return kept;
  }

  // The highest point of a line (the first of equals): a loop (Math.max.apply overflows the stack).
  function highest(points) {
    var best = points[0];
    for (var i = 1; i < points.length; i++) { if (points[i][1] > best[1]) { best = points[i]; } }
    return best;
  }

  function missing(value) { return value === null || value === undefined; }

  // A value as the reader's locale writes it, to two decimals at most.
  function number(value) {
    return missing(value) ? "—" : value.toLocaleString(undefined, {maximumFractionDigits: 2});
  }

  function size(figure) {
    var width = Math.min(figure.clientWidth || 520, WIDEST);
    return {width: width, height: Math.round(Math.max(180, Math.min(260, width * 0.55)))};
  }

  // One chart: lines = [{label, series}], the same name's series of one run or of several.
  function chart(container, title, lines) {
    var figure = document.createElement("figure");
    figure.className = "chart";
    figure.setAttribute("data-series", title);
    var caption = document.createElement("figcaption");
    caption.textContent = title;
    figure.appendChild(caption);
    container.appendChild(figure);  // in the page first, so that its width is known

    var first = lines[0].series;
    var xName = String(first.x || "x"), yName = String(first.y || "y");
    var drawn = lines.map(function (line) { return thinned(ascending(line.series.points)); });
    // One table for uPlot: every line's x values, each line's y where it has one (undefined, spanned, elsewhere).
    var data = uPlot.join(drawn.map(function (points) {
      return [points.map(function (p) { return p[0]; }), points.map(function (p) { return p[1]; })];
    }));
    var xs = data[0];
    var series = [{label: xName, value: function (u, value) { return number(value); }}];
    lines.forEach(function (line, index) {
      series.push({
        label: line.label || yName,
        stroke: COLOURS[index % COLOURS.length],
        width: 2,
        spanGaps: true,
        // A line without a point at the hovered x shows its nearest, with that point's x.
        value: function (u, value, seriesIndex, at) {
          if (missing(at)) { return "—"; }
          var text = number(value);
          return at === u.cursor.idx ? text : text + " at " + xName + " " + number(xs[at]);
        },
      });
    });
    var options = Object.assign(size(figure), {
      series: series,
      scales: {x: {time: false}},
      axes: [{label: xName, grid: {stroke: "#e2e6eb"}, ticks: {stroke: "#cbd2d9"}},
             {label: yName, grid: {stroke: "#e2e6eb"}, ticks: {stroke: "#cbd2d9"}, size: 56}],
      legend: {live: true},
      cursor: {
        // A line without a point at the hovered x: its nearest point in x (uPlot would show nothing).
        dataIdx: function (u, seriesIndex, hovered) {
          var ys = u.data[seriesIndex];
          if (!missing(ys[hovered])) { return hovered; }
          var below = hovered - 1, above = hovered + 1;
          while (below >= 0 && missing(ys[below])) { below--; }
          while (above < ys.length && missing(ys[above])) { above++; }
          if (below < 0) { return above < ys.length ? above : hovered; }
          if (above >= ys.length) { return below; }
          return xs[hovered] - xs[below] <= xs[above] - xs[hovered] ? below : above;
        },
      },
    });
    var plot = new uPlot(options, data, figure);

    // What a reader wants of a line first: its highest point (the best price), over every point.
    var peaks = document.createElement("ul");
    peaks.className = "peaks";
    lines.forEach(function (line, index) {
      var best = highest(line.series.points);
      var item = document.createElement("li");
      item.setAttribute("data-line", line.label);
      item.setAttribute("data-points", String(line.series.points.length));
      item.setAttribute("data-drawn", String(drawn[index].length));
      item.style.color = COLOURS[index % COLOURS.length];
      item.textContent = (line.label ? line.label + ": " : "") + "highest " + yName + " " + number(best[1]) + " at "
        + xName + " " + number(best[0]);
      peaks.appendChild(item);
    });
    figure.appendChild(peaks);
    return {container: container, figure: figure, plot: plot};
  }

  // Every series of the runs, one chart per name, each run's series of that name on it.
  // runs: [{label, report}]. Returns the number of charts drawn into container.
  function draw(container, runs) {
    drawnCharts = drawnCharts.filter(function (drawn) {
      if (drawn.container === container) { drawn.plot.destroy(); }
      return drawn.container !== container;
    });
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
      drawnCharts.push(chart(container, name, lines));
    });
    return names.length;
  }

  // A phone turned, a window narrowed: each chart takes its figure's new width.
  var pending = false;
  window.addEventListener("resize", function () {
    if (pending) { return; }
    pending = true;
    requestAnimationFrame(function () {
      pending = false;
      drawnCharts.forEach(function (drawn) { drawn.plot.setSize(size(drawn.figure)); });
    });
  });

  return {draw: draw};
})();
