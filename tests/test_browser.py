"""The replay page in a real Chromium (Playwright) against a real gunicorn, with keys and without."""

from __future__ import annotations

import hashlib

import pytest

from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server

SECRET = "replay-page-secret"
KEYS = {"RUN_REGISTRY_API_KEYS": f"viewer:{hashlib.sha256(SECRET.encode()).hexdigest()}:read"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("browser") / "gunicorn.log") as running:
        yield running


def new_run(server, headers=None):
    return http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42", headers=headers).json()["runId"]


def watch(browser, url, until="complete", key=None):
    """Open the page, give it ``key`` when it asks for one, and wait for its replay to end."""
    page = browser.new_page()
    page.goto(url)
    if key is not None:
        page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
        page.fill("#key", key)
        page.click("#key-form button")
    page.wait_for_selector(f"body[data-replay={until}]", timeout=20_000)
    return page


@pytest.mark.parametrize("query", ["", "?pace=5"], ids=["as-fast-as-possible", "paced"])
def test_replay_page_shows_the_whole_transcript(server, browser, query):
    run_id = new_run(server)
    events = http("GET", f"{server.url}/runs/{run_id}/events").json()["events"]
    metadata = http("GET", f"{server.url}/runs/{run_id}").json()

    page = watch(browser, f"{server.url}/runs/{run_id}/replay{query}")

    assert page.text_content("#status") == f"Replay complete: {len(events)} of {len(events)} events."
    assert page.text_content("#transcript") == "".join(e["data"]["text"] for e in events if e["type"] == "token")
    assert page.text_content("#run-id") == run_id
    assert metadata["eventsSha256"] in page.text_content("#metadata") and "pricing-v1" in page.text_content("#metadata")
    assert "bestPrice" in page.text_content("#report") and "63.99" in page.text_content("#report")
    assert page.get_attribute("#snapshot-link", "href") == f"/runs/{run_id}/snapshot"
    assert page.get_attribute("#csv-link", "href") == f"/runs/{run_id}/export.csv"
    page.close()


def test_replay_page_shows_markup_from_a_run_as_text(tmp_path, browser):
    with Gunicorn(tmp_path / "gunicorn.log", env={"RUN_REGISTRY_ENGINE": "harness.fakes:FormulaEngine"}) as server:
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=x&seed=1").json()["runId"]
        page = watch(browser, f"{server.url}/runs/{run_id}/replay")
        dom = page.content()
    assert "<img src=x onerror=" in page.text_content("#transcript")  # shown as text...
    assert "<img src=\"x\"" not in dom and page.title() == f"Replay {run_id}"  # ...never parsed, never run
    assert "<b>metric</b>" in page.text_content("#report")


def test_replay_page_shows_a_running_run_live_and_then_the_done_run(tmp_path, browser):
    env = {"RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": "20"}  # about 3 s for the default engine's 147 events
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        started = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=7",
                       headers={"Prefer": "respond-async"})
        assert started.status == 202
        run_id = started.json()["runId"]
        page = watch(browser, f"{server.url}/runs/{run_id}/replay")
        done = http("GET", f"{server.url}/runs/{run_id}").json()
        events = http("GET", f"{server.url}/runs/{run_id}/events").json()["events"]
    assert page.get_attribute("body", "data-live") == "true"  # it loaded while the run was running...
    assert page.text_content("#status") == f"Run complete, watched live: {len(events)} of {len(events)} events."
    assert page.text_content("#transcript") == "".join(e["data"]["text"] for e in events if e["type"] == "token")
    metadata = page.text_content("#metadata")  # ...and says what the run is now, not what it was
    assert "Statusdone" in metadata and f"Events{len(events)}" in metadata and done["eventsSha256"] in metadata


def test_with_keys_the_page_asks_for_one_and_watches_with_it(tmp_path, browser):
    starter = "a-key-that-may-start-runs"
    keys = f"{KEYS['RUN_REGISTRY_API_KEYS']},starter:{hashlib.sha256(starter.encode()).hexdigest()}:read+run"
    env = {"RUN_REGISTRY_API_KEYS": keys, "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": "20"}
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=7",
                      headers={"Authorization": f"Bearer {starter}", "Prefer": "respond-async"}).json()["runId"]
        page_bytes = http("GET", f"{server.url}/runs/{run_id}/replay").body  # the page itself needs no key...
        assert page_bytes == http("GET", f"{server.url}/runs/run_unknown_1_1/replay").body  # ...and tells nothing
        requests: list[str] = []
        page = browser.new_page()
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{server.url}/runs/{run_id}/replay")
        page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)  # asked for, not guessed
        page.fill("#key", SECRET)
        page.click("#key-form button")
        page.wait_for_selector("body[data-replay=complete]", timeout=20_000)
        with page.expect_download() as download:
            page.click("#csv-link")
        csv = download.value.path().read_bytes()
        reader = {"Authorization": f"Bearer {SECRET}"}
        events = http("GET", f"{server.url}/runs/{run_id}/events", headers=reader).json()["events"]
        expected_csv = http("GET", f"{server.url}/runs/{run_id}/export.csv", headers=reader).body
    assert page.get_attribute("body", "data-live") == "true"
    assert page.text_content("#status") == f"Run complete, watched live: {len(events)} of {len(events)} events."
    assert page.text_content("#transcript") == "".join(e["data"]["text"] for e in events if e["type"] == "token")
    assert csv == expected_csv and download.value.suggested_filename == f"{run_id}.csv"
    assert all(SECRET not in url for url in [page.url, *requests])  # the key went in headers only
