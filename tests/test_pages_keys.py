"""Keys in the browser, in a real Chromium on a real gunicorn: a wrong key is said to be refused, a
key without a scope is told which scope (the service's 403 says), and a key kept in the tab can be
forgotten on either page. Screenshots in artifacts/screenshots/ (their names)."""

from __future__ import annotations

import pytest

from app.access import new_key
from harness.browser import shot
from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server
READER, READER_ENTRY = new_key("reader", "read")
RUNNER, RUNNER_ENTRY = new_key("runner", "read+run")
KEPT = "sessionStorage.getItem('run-registry-key')"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Gunicorn(tmp_path_factory.mktemp("page-keys") / "gunicorn.log",
                  env={"RUN_REGISTRY_API_KEYS": f"{READER_ENTRY},{RUNNER_ENTRY}"}) as running:
        yield running


def asked(page, why: str) -> None:
    """Wait for the prompt to say ``why`` (it is asked again after each key given)."""
    page.wait_for_function("why => document.body.dataset.key === 'wanted'"
                           " && document.getElementById('key-why').textContent === why", arg=why)


def test_a_wrong_key_is_said_to_be_refused_and_is_not_kept(server, browser):
    page = browser.new_page()
    page.goto(f"{server.url}/")
    page.click("#lookup-form button")
    asked(page, "This service needs a key: give one to go on.")
    page.fill("#key", "rr_not-a-key-of-this-service")
    page.click("#key-form button")
    asked(page, "That key was refused (401): check it and try again.")
    assert page.evaluate(KEPT) is None and page.is_hidden("#forget-key")  # not sent again
    shot(page, "home-a-wrong-key-is-refused-401")
    page.goto(f"{server.url}/runs/run_pricing-v1_42_1/replay")  # the replay page says it the same way
    asked(page, "This service needs a key: give one to go on.")
    page.fill("#key", "rr_not-a-key-of-this-service")
    page.click("#key-form button")
    asked(page, "That key was refused (401): check it and try again.")
    shot(page, "replay-a-wrong-key-is-refused-401")
    page.close()


def test_a_key_without_the_scope_is_told_which_scope_it_lacks(server, browser):
    page = browser.new_page()
    page.goto(f"{server.url}/")
    page.fill("#lookup-seed", "4242")  # a run that does not exist: looking it up would start it
    page.click("#lookup-form button")
    asked(page, "This service needs a key: give one to go on.")
    page.fill("#key", READER)
    page.click("#key-form button")
    asked(page, "This key may not do that (403): Key reader lacks the run scope this needs.")
    assert page.evaluate(KEPT) == READER  # a good key, kept until another is given or it is forgotten
    shot(page, "home-a-key-without-the-run-scope-403")
    page.fill("#key", RUNNER)  # one that may
    page.click("#key-form button")
    page.wait_for_url("**/runs/run_pricing-v1_4242_*/replay")
    page.close()


def test_the_key_kept_in_the_tab_can_be_forgotten_on_either_page(server, browser):
    run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42",
                  headers={"Authorization": f"Bearer {RUNNER}"}).json()["runId"]
    page = browser.new_page()
    page.goto(f"{server.url}/runs/{run_id}/replay")
    page.fill("#key", READER)
    page.click("#key-form button")
    page.wait_for_selector("body[data-replay='complete']", timeout=20_000)
    assert page.is_visible("#forget-key")
    page.click("#forget-key")
    asked(page, "Key forgotten: this tab keeps none now. Give a key to go on.")
    assert page.evaluate(KEPT) is None and page.is_hidden("#forget-key")
    assert page.text_content("#metadata") == "" and page.text_content("#transcript") == ""  # nothing read with it
    shot(page, "replay-key-forgotten")
    page.fill("#key", READER)  # the prompt takes one again
    page.click("#key-form button")
    page.wait_for_selector("body[data-replay='complete']", timeout=20_000)

    page.goto(f"{server.url}/")  # the home page, in the same tab: the key came along
    page.wait_for_selector("body[data-ready='true']")
    assert page.is_visible("#forget-key") and page.is_hidden("#key-form")
    page.click("#forget-key")
    asked(page, "Key forgotten: this tab keeps none now. Give a key to go on.")
    assert page.evaluate(KEPT) is None and page.is_hidden("#forget-key")
    shot(page, "home-key-forgotten")
    page.close()
