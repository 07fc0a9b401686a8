"""The home page's recent runs (GET /runs), in a real Chromium on a real gunicorn: newest first, with
their status, scenario, seed, time (in the browser's locale and time zone) and determinism, a page
at a time, each opening its replay page; with keys, once the key is given. Screenshots in
artifacts/screenshots/ (their names)."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime

import pytest

from app.access import new_key
from harness.browser import console_errors
from harness.browser import shot
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import wait_until

pytestmark = pytest.mark.server
SECRET, ENTRY = new_key("browser", "read+run")
KEY = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """With keys, and an engine whose scenarioId says how it runs (breaks-...: fails; paced-...: slowly)."""
    env = {"RUN_REGISTRY_API_KEYS": ENTRY, "RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine"}
    with Gunicorn(tmp_path_factory.mktemp("recent-runs") / "gunicorn.log", env=env) as running:
        yield running


def lookup(server, scenario_id: str, seed: int, wait: bool = True) -> str:
    headers = KEY if wait else {**KEY, "Prefer": "respond-async"}
    reply = http("GET", f"{server.url}/runs/lookup?scenarioId={scenario_id}&seed={seed}", headers=headers)
    return reply.json()["runId"] if reply.status in (200, 202) else ""


def test_the_home_page_lists_the_recent_runs_and_each_opens_its_replay_page(server, browser):
    for seed in range(1, 21):  # more than a page of 20
        lookup(server, "plain", seed)
    verified = lookup(server, "plain", 21)
    assert http("POST", f"{server.url}/runs/{verified}/verify", headers=KEY).status == 200
    failed = lookup(server, "breaks-here", 1, wait=False)
    wait_until(lambda: http("GET", f"{server.url}/runs/{failed}", headers=KEY).json()["status"] == "failed")
    running = lookup(server, "paced-1000-30", 1, wait=False)  # half a minute: still running while the page reads
    listed = http("GET", f"{server.url}/runs?limit=100", headers=KEY).json()["runs"]
    assert [run["runId"] for run in listed[:3]] == [running, failed, verified] and len(listed) == 23

    page = browser.new_page(locale="en-GB", timezone_id="UTC")
    errors = console_errors(page)
    page.goto(f"{server.url}/")
    page.wait_for_selector("body[data-key='wanted']")  # the list is read with a key: the page asks for it
    errors.clear()  # GET /runs's 401, which made it ask
    page.fill("#key", SECRET)
    page.click("#key-form button")
    page.wait_for_selector("body[data-runs='20']")
    rows = page.locator("#runs tbody tr")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.runId)") == [run["runId"] for run in listed[:20]]

    def row(index: int) -> list[str]:
        return rows.nth(index).locator("td").all_text_contents()

    def created(run_id: str) -> str:
        at = next(run["createdAt"] for run in listed if run["runId"] == run_id)
        return datetime.fromtimestamp(at / 1000, UTC).strftime("%d/%m/%Y, %H:%M:%S")  # en-GB, in UTC

    assert row(0) == ["running", "paced-1000-30", "1", created(running), "—"]
    assert row(1) == ["failed", "breaks-here", "1", created(failed), "—"]
    assert row(2) == ["done", "plain", "21", created(verified), "reproduced (1 check)"]
    assert row(3)[4] == "not re-checked yet"
    assert page.is_visible("#more-runs")
    page.click("#more-runs")  # the next page, after the last row
    page.wait_for_selector("body[data-runs='23']")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.runId)") == [run["runId"] for run in listed]
    assert page.is_hidden("#more-runs")  # nothing older
    shot(page, "home-recent-runs")

    rows.nth(2).locator("a").click()  # a run opens its replay page
    page.wait_for_url(f"**/runs/{verified}/replay")
    page.wait_for_selector("body[data-replay='complete']", timeout=20_000)
    assert page.text_content("#run-id") == verified
    shot(page, "recent-run-opened-from-the-home-page")
    assert errors == []
    page.close()
