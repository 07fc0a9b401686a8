"""Charts that can be read, in a real Chromium on a real gunicorn: ticks and gridlines (uPlot's), the
value of the point under the pointer read out, and at a phone's width a chart that fits with no
sideways scroll, on the replay page and in the compare view; all under the pages' strict policy
(a violation would be a console error). Screenshots in artifacts/screenshots/ (their names)."""

from __future__ import annotations

import pytest

from harness.browser import PHONE
from harness.browser import console_errors
from harness.browser import shot
from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("page-charts") / "gunicorn.log") as running:
        yield running


def report_of(server, run_id: str) -> dict:
    events = http("GET", f"{server.url}/runs/{run_id}/events").json()["events"]
    return next(event["data"] for event in events if event["type"] == "report")


def test_hovering_a_chart_reads_out_the_point_under_the_pointer(server, browser):
    run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
    report = report_of(server, run_id)
    profit = next(series for series in report["series"] if series["name"] == "profit")
    prices = [point[0] for point in profit["points"]]
    page = browser.new_page(locale="en-US")
    errors = console_errors(page)
    page.goto(f"{server.url}/runs/{run_id}/replay")
    page.wait_for_selector("body[data-replay='complete']", timeout=20_000)
    chart = page.locator(".chart[data-series='profit']")
    assert chart.locator(".u-axis").count() == 2  # ticks and their values, on both axes
    legend = chart.locator(".u-legend .u-value")
    assert legend.all_text_contents() == ["—", "—"]  # nothing under the pointer yet
    # The pointer over the best price: the plot spans the prices, first to last.
    plot = chart.locator(".u-over")
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    share = (report["bestPrice"] - prices[0]) / (prices[-1] - prices[0])
    page.mouse.move(box["x"] + share * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_function("values => values[0].textContent !== '—'", arg=legend.element_handles())
    assert chart.locator(".u-legend .u-label").all_text_contents() == ["price ($)", "profit ($)"]
    assert legend.all_text_contents() == [f"{report['bestPrice']}", f"{report['profit']:,}"]
    shot(page, "chart-hover-reads-out-the-best-price")
    assert errors == []
    page.close()


def test_at_a_phones_width_the_charts_fit_with_no_sideways_scroll(server, browser):
    run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
    page = browser.new_page(viewport=PHONE, locale="en-US")
    errors = console_errors(page)
    page.goto(f"{server.url}/runs/{run_id}/replay")
    page.wait_for_selector("body[data-replay='complete']", timeout=20_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for canvas in page.locator(".chart canvas").all():
        box = canvas.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and box["width"] >= 300
    shot(page, "replay-at-a-phones-width")
    assert errors == []

    page.goto(f"{server.url}/?left=pricing-v1:42&right=pricing-v2:42")
    page.wait_for_selector("body[data-compare='not-started']", timeout=20_000)
    errors.clear()  # POST /compare's 404: these runs are not made yet (the page offers to start them)
    page.click("#start-compare")
    page.wait_for_selector("body[data-compare='shown']", timeout=30_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for canvas in page.locator(".chart canvas").all():
        box = canvas.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    shot(page, "compare-at-a-phones-width")

    page.set_viewport_size({"width": 1024, "height": 740})  # turned, or a wider window: the charts follow
    page.wait_for_function("() => document.querySelector('.chart canvas').getBoundingClientRect().width > 600")
    assert errors == []
    page.close()


def test_in_the_compare_view_a_line_without_a_point_at_the_hovered_price_reads_out_its_nearest(server, browser):
    page = browser.new_page(locale="en-US")
    page.goto(f"{server.url}/?left=pricing-v1:44&right=pricing-v2:44")
    page.wait_for_selector("body[data-compare='not-started']", timeout=20_000)
    page.click("#start-compare")
    page.wait_for_selector("body[data-compare='shown']", timeout=30_000)
    left, right = (dict(next(s for s in report_of(server, run_id)["series"] if s["name"] == "profit")["points"])
                   for run_id in page.locator("#sides a").all_text_contents())
    hovered = next(x for x in right if x not in left)  # a price the right run tried and the left did not
    nearest = min(left, key=lambda x: abs(x - hovered))
    prices = sorted({*left, *right})
    chart = page.locator(".chart[data-series='profit']")
    plot = chart.locator(".u-over")
    plot.scroll_into_view_if_needed()
    box = plot.bounding_box()
    page.mouse.move(box["x"] + (hovered - prices[0]) / (prices[-1] - prices[0]) * box["width"],
                    box["y"] + box["height"] / 2)
    legend = chart.locator(".u-legend .u-value")
    page.wait_for_function("values => values[0].textContent !== '—'", arg=legend.element_handles())
    assert legend.all_text_contents() == [
        f"{hovered}", f"{left[nearest]:,} at price ($) {nearest}", f"{right[hovered]:,}"]  # each line's own point
    shot(page, "compare-chart-hover-reads-out-both-lines")
    page.close()
