"""The front door in a real Chromium, on a real gunicorn: the home page, a lookup watched live to its
end with its charts, the compare view with both runs' series on one chart, a failed run's page; with
keys off and on. Screenshots are kept in artifacts/screenshots/ (what each shows: its name)."""

from __future__ import annotations

import pytest

from app.access import new_key
from harness.browser import shot
from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server
SECRET, ENTRY = new_key("browser", "read+run")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """The default engine, paced like a real one (147 events, 8 ms apart), without keys."""
    env = {"RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": "8"}
    with Gunicorn(tmp_path_factory.mktemp("front-open") / "gunicorn.log", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """With keys, and an engine whose scenarioId says how it runs (one that fails, for one)."""
    env = {"RUN_REGISTRY_API_KEYS": ENTRY, "RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine"}
    with Gunicorn(tmp_path_factory.mktemp("front-keyed") / "gunicorn.log", env=env) as server:
        yield server


def test_the_home_page_looks_a_run_up_and_the_replay_page_watches_it_live_with_its_charts(open_server, browser):
    page = browser.new_page(locale="en-US")
    page.goto(f"{open_server.url}/")
    page.wait_for_selector("body[data-ready='true']")
    assert page.title() == "Run Registry"
    shot(page, "home")
    page.fill("#lookup-scenario", "pricing-v1")
    page.fill("#lookup-seed", "77")
    page.click("#lookup-form button")
    page.wait_for_url("**/runs/run_pricing-v1_77_*/replay")
    page.wait_for_selector("body[data-live='true']")  # it opened while the run was running
    page.wait_for_selector("body[data-replay='complete']", timeout=30_000)
    assert page.text_content("#status") == "Run complete, watched live: 147 of 147 events."
    metadata = dict(zip(page.locator("#metadata dt").all_text_contents(),
                        page.locator("#metadata dd").all_text_contents(), strict=True))
    run_id = page.url.split("/runs/")[1].split("/")[0]
    done = http("GET", f"{open_server.url}/runs/{run_id}").json()
    assert (metadata["Status"], metadata["Events"], metadata["Events sha256"]) == ("done", "147", done["eventsSha256"])
    assert page.locator(".chart").evaluate_all("charts => charts.map(c => c.dataset.series)") == ["profit", "buyers"]
    assert page.locator(".chart canvas").count() == 2  # uPlot's
    assert page.locator(".chart [data-line]").evaluate_all("lines => lines.map(l => l.dataset.points)") == ["7", "7"]
    # The point a reader wants first, read out under its chart: the best price.
    events = http("GET", f"{open_server.url}/runs/{run_id}/events").json()["events"]
    report = next(event["data"] for event in events if event["type"] == "report")
    assert page.text_content(".chart[data-series='profit'] .peaks") == (
        f"highest profit ($) {report['profit']:,} at price ($) {report['bestPrice']}")
    assert "series" not in page.locator("#report td").all_text_contents()  # drawn, not listed
    shot(page, "live-lookup-done-with-charts")
    page.close()


def test_the_compare_view_draws_both_runs_series_of_a_name_on_one_chart(open_server, browser):
    page = browser.new_page(locale="en-US")
    page.goto(f"{open_server.url}/?left=pricing-v1:42&right=pricing-v2:42")  # a comparison has a URL
    page.wait_for_selector("body[data-compare='not-started']", timeout=30_000)  # a URL starts nothing
    shot(page, "compare-from-a-url-offers-to-start-the-runs")
    page.click("#start-compare")  # a person's action does
    page.wait_for_selector("body[data-compare='shown']", timeout=30_000)
    assert page.get_attribute("body", "data-charts") == "2"
    for name in ("profit", "buyers"):
        lines = page.locator(f".chart[data-series='{name}'] [data-line]")
        assert lines.evaluate_all("ls => ls.map(l => l.dataset.line)") == [
            "left: pricing-v1 seed 42", "right: pricing-v2 seed 42"]
        labels = page.locator(f".chart[data-series='{name}'] .u-legend .u-label").all_text_contents()
        assert labels[1:] == ["left: pricing-v1 seed 42", "right: pricing-v2 seed 42"]  # one chart, both lines
    assert "The transcripts differ from event 1" in page.text_content("#verdict")
    metrics = page.locator("#metrics tbody tr td:first-child").all_text_contents()
    assert "bestPrice" in metrics and "series" not in metrics
    shot(page, "compare-view-two-runs-one-chart-per-series")
    page.close()


def test_with_keys_the_pages_ask_for_one_and_a_failed_runs_page_offers_no_downloads(keyed_server, browser):
    page = browser.new_page(locale="en-US")
    page.goto(f"{keyed_server.url}/")
    page.fill("#lookup-scenario", "paced-20-6-breaks")
    page.fill("#lookup-seed", "1")
    page.click("#lookup-form button")
    page.wait_for_selector("body[data-key='wanted']")
    shot(page, "home-with-keys-asking-for-one")
    page.fill("#key", SECRET)
    page.click("#key-form button")  # the lookup goes on, with the key, in a header
    page.wait_for_url("**/runs/run_paced-20-6-breaks_1_*/replay")
    page.wait_for_selector("body[data-replay='failed']", timeout=30_000)  # the key came along (this tab's)
    assert page.text_content("#status").startswith("The run failed: The engine failed to run scenario")
    assert page.is_hidden("#downloads")
    assert SECRET not in page.url
    shot(page, "failed-run-with-keys-no-downloads")
    page.goto(f"{keyed_server.url}/?left=paced-1-3:1&right=paced-1-3:2")
    page.wait_for_selector("body[data-compare='not-started']", timeout=30_000)
    page.click("#start-compare")
    page.wait_for_selector("body[data-compare='shown']", timeout=30_000)
    assert page.get_attribute("body", "data-charts") == "0"  # runs whose reports carry no series
    shot(page, "compare-view-with-keys-no-series")
    page.close()


def test_a_series_of_200000_points_is_drawn_thinned(keyed_server, browser):
    """Math.min.apply over 200,000 points overflowed the stack ("Maximum call stack size exceeded"). What
    is drawn is each of 2,000 runs of points' lowest and highest: the line's shape and its peak."""
    headers = {"Authorization": f"Bearer {SECRET}"}
    run_id = http("GET", f"{keyed_server.url}/runs/lookup?scenarioId=series-200000&seed=1", headers=headers,
                  timeout=30).json()["runId"]
    page = browser.new_page(locale="en-US")
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{keyed_server.url}/")
    page.evaluate(f"sessionStorage.setItem('run-registry-key', '{SECRET}')")
    page.goto(f"{keyed_server.url}/runs/{run_id}/replay")
    page.wait_for_selector("body[data-replay='complete']", timeout=30_000)
    assert errors == []
    line = page.locator(".chart [data-line]")
    assert line.get_attribute("data-points") == "200000" and int(line.get_attribute("data-drawn")) <= 4002
    assert line.text_content() == "highest value 999 at n 642"  # of every point, not only of those drawn
    shot(page, "series-of-200000-points-thinned")
    page.close()
