"""Where the pages left a person with nothing to go on, in a real Chromium on a real gunicorn: a runId
that is not there (any more), opened from the home page or by its URL, with keys and without; a
failed run's page; the icon browsers ask for. Screenshots in artifacts/screenshots/ (their names)."""

from __future__ import annotations

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
GONE = "run_pricing-v1_42_1764180000123"  # a runId of the right shape that this service never had


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """Without keys, keeping runs 30 minutes (which the pages say)."""
    with Gunicorn(tmp_path_factory.mktemp("dead-ends-open") / "gunicorn.log",
                  env={"RUN_REGISTRY_TTL_MIN": "30"}) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """With keys, and an engine whose scenarioId says how it runs (paced-1-6-breaks: six tokens, then it fails)."""
    env = {"RUN_REGISTRY_API_KEYS": ENTRY, "RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine"}
    with Gunicorn(tmp_path_factory.mktemp("dead-ends-keyed") / "gunicorn.log", env=env) as server:
        yield server


def with_key(browser, server):
    """A page of a tab that keeps the key, as the home page leaves it once given."""
    page = browser.new_page(locale="en-US")
    page.goto(f"{server.url}/")
    page.evaluate(f"sessionStorage.setItem('run-registry-key', '{SECRET}')")
    return page


def test_an_unknown_runid_opened_from_the_home_page_is_said_to_be_missing_there(open_server, browser):
    page = browser.new_page(locale="en-US")
    page.goto(f"{open_server.url}/")
    page.fill("#open-run-id", GONE)
    page.click("#open-form button")
    page.wait_for_selector("body[data-open='not-found']")
    assert page.text_content("#open-message") == (
        f"No run {GONE} here: it may have expired (runs are kept for 30 minutes) or never existed. Look it up by its"
        " scenario and seed above: that starts it again when there is none.")
    assert page.url == f"{open_server.url}/"  # still on the form, to put it right
    shot(page, "home-open-an-unknown-run-says-it-may-have-expired")
    page.close()


def test_the_replay_page_of_an_unknown_run_says_what_happened_and_where_to_go(open_server, browser):
    page = browser.new_page(locale="en-US")
    response = page.goto(f"{open_server.url}/runs/{GONE}/replay")
    page.wait_for_selector("body[data-replay='not-found']")
    assert response.status == 404 and response.headers["content-type"].startswith("text/html")
    assert page.text_content("#not-found-what") == (
        f"No run {GONE} here: it may have expired (runs are kept for 30 minutes) or never existed.")
    assert page.is_hidden("#run")  # no empty metadata, downloads or narration
    shot(page, "replay-of-an-unknown-run-says-it-may-have-expired")
    page.click("#not-found a")
    page.wait_for_selector("body[data-ready='true']")
    assert page.url == f"{open_server.url}/"
    page.close()
    # A client of the API still gets the contract's JSON 404, and the same page is served for every run.
    for accept in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        reply = http("GET", f"{open_server.url}/runs/{GONE}/replay", headers=accept)
        assert (reply.status, reply.json()) == (404, {"type": "BAD_INPUT", "message": f"Run {GONE} not found"})
    run_id = http("GET", f"{open_server.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
    html = {"Accept": "text/html"}
    assert (http("GET", f"{open_server.url}/runs/{run_id}/replay", headers=html).body
            == http("GET", f"{open_server.url}/runs/{GONE}/replay", headers=html).body)


def test_with_keys_the_replay_page_of_an_unknown_run_says_so_once_it_has_asked_with_the_key(keyed_server, browser):
    run_id = http("GET", f"{keyed_server.url}/runs/lookup?scenarioId=paced-1-3&seed=1", headers=KEY).json()["runId"]
    known = http("GET", f"{keyed_server.url}/runs/{run_id}/replay", headers={"Accept": "text/html"})
    unknown = http("GET", f"{keyed_server.url}/runs/{GONE}/replay", headers={"Accept": "text/html"})
    assert (known.status, unknown.status) == (200, 200) and known.body == unknown.body  # the page tells no one
    page = browser.new_page(locale="en-US")
    page.goto(f"{keyed_server.url}/runs/{GONE}/replay")
    page.wait_for_selector("body[data-key='wanted']")
    page.fill("#key", SECRET)
    page.click("#key-form button")
    page.wait_for_selector("body[data-replay='not-found']")  # it asked, with the key
    assert page.text_content("#not-found-what") == (
        f"No run {GONE} here: it may have expired (runs are kept for 60 minutes) or never existed.")
    shot(page, "replay-of-an-unknown-run-with-keys-once-asked-with-the-key")
    page.close()


def test_a_failed_runs_page_narrates_what_happened_and_runs_it_again_at_a_persons_click(keyed_server, browser):
    started = http("GET", f"{keyed_server.url}/runs/lookup?scenarioId=paced-1-6-breaks&seed=3",
                   headers={**KEY, "Prefer": "respond-async"})
    run_id = started.json()["runId"]
    wait_until(lambda: http("GET", f"{keyed_server.url}/runs/{run_id}", headers=KEY).json()["status"] == "failed",
               timeout=10)
    error = http("GET", f"{keyed_server.url}/runs/{run_id}", headers=KEY).json()["error"]["message"]
    page = with_key(browser, keyed_server)
    page.goto(f"{keyed_server.url}/runs/{run_id}/replay")  # opened after it failed: not watched live
    page.wait_for_selector("body[data-replay='failed']", timeout=20_000)
    assert page.text_content("#transcript") == " t1 t2 t3 t4 t5 t6"  # what it said before it failed
    assert page.text_content("#failure-what") == f"It stopped after 7 events, the last a token: {error}"
    assert error == "The engine failed to run scenario paced-1-6-breaks seed 3: RuntimeError: engine exploded mid-run"
    assert page.text_content("#failure-next") == (
        "Nothing of a failed run is kept as evidence (so there is nothing to download), and the next lookup of"
        " paced-1-6-breaks seed 3 starts a new run.")
    assert page.is_hidden("#downloads")
    shot(page, "failed-run-narrates-what-happened")
    page.click("#run-again")  # a person's click: a new run, watched on its own page
    page.wait_for_url(lambda url: "/runs/run_paced-1-6-breaks_3_" in url and run_id not in url)
    page.wait_for_selector("body[data-replay='failed']", timeout=20_000)  # the engine still fails
    assert page.text_content("#failure-what").startswith("It stopped after 7 events, the last a token: The engine")
    page.close()


def test_a_run_that_failed_before_saying_anything_shows_no_empty_narration(keyed_server, browser):
    started = http("GET", f"{keyed_server.url}/runs/lookup?scenarioId=paced-1-0-breaks&seed=1",
                   headers={**KEY, "Prefer": "respond-async"})
    page = with_key(browser, keyed_server)
    page.goto(f"{keyed_server.url}/runs/{started.json()['runId']}/replay")
    page.wait_for_selector("body[data-replay='failed']", timeout=20_000)
    assert page.is_hidden("#transcript")
    assert page.text_content("#failure-what").startswith("It stopped after 1 event, the last a start: The engine")
    page.close()


def test_both_pages_have_an_icon_and_no_console_errors(open_server, browser):
    run_id = http("GET", f"{open_server.url}/runs/lookup?scenarioId=pricing-v1&seed=43").json()["runId"]
    errors: list[str] = []
    for path, done in (("/", "body[data-ready='true']"), (f"/runs/{run_id}/replay", "body[data-replay='complete']")):
        context = browser.new_context(locale="en-US")  # a cache of its own: each page's icon is asked for
        page = context.new_page()
        errors += console_errors(page)
        page.goto(f"{open_server.url}{path}")
        page.wait_for_selector(done, timeout=20_000)
        assert page.get_attribute("link[rel='icon']", "href") == "/favicon.ico"
        context.close()
    icon = http("GET", f"{open_server.url}/favicon.ico")
    assert (icon.status, icon.headers["Content-Type"]) == (200, "image/svg+xml; charset=utf-8")
    assert icon.headers["Cache-Control"] == "public, max-age=604800" and icon.body.startswith(b"<svg")
    # The browser asks for the icon by itself, after the page: its answers are in the service's log.
    wait_until(lambda: open_server.log().count('"path":"/favicon.ico","status":200') >= 3, timeout=10)
    assert '"path":"/favicon.ico","status":404' not in open_server.log()
    assert errors == []
