"""The replay page in a real headless Chromium against a real gunicorn."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from harness.servers import Gunicorn
from harness.servers import chromium_dom
from harness.servers import http
from harness.servers import require_binary

pytestmark = pytest.mark.server


class Page(HTMLParser):
    """The text of each element with an id, and the attributes of <body> and of links."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self.body: dict[str, str | None] = {}
        self.title = ""
        self._open: list[str | None] = []
        self._in_title = False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "body":
            self.body = attributes
        if tag == "a" and attributes.get("id"):
            self.links[attributes["id"]] = attributes.get("href") or ""
        self._in_title = tag == "title"
        self._open.append(attributes.get("id"))
        if attributes.get("id"):
            self.text.setdefault(attributes["id"], "")

    def handle_endtag(self, tag):
        self._in_title = False
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        for element_id in filter(None, self._open):
            self.text[element_id] += data


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_binary("chromium")
    with Gunicorn(tmp_path_factory.mktemp("browser") / "gunicorn.log") as running:
        yield running


def new_run(server):
    return http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]


@pytest.mark.parametrize("query", ["", "?pace=5"], ids=["as-fast-as-possible", "paced"])
def test_replay_page_shows_the_whole_transcript(server, tmp_path, query):
    run_id = new_run(server)
    events = http("GET", f"{server.url}/runs/{run_id}/events").json()["events"]
    metadata = http("GET", f"{server.url}/runs/{run_id}").json()

    page = Page(chromium_dom(f"{server.url}/runs/{run_id}/replay{query}", tmp_path))

    assert page.body.get("data-replay") == "complete", page.text.get("status")
    assert page.text["status"] == f"Replay complete: {len(events)} of {len(events)} events."
    assert page.text["transcript"] == "".join(e["data"]["text"] for e in events if e["type"] == "token")
    assert page.text["run-id"] == run_id
    assert metadata["eventsSha256"] in page.text["metadata"] and "pricing-v1" in page.text["metadata"]
    assert "bestPrice" in page.text["report"] and "63.99" in page.text["report"]
    assert page.links["snapshot-link"] == f"/runs/{run_id}/snapshot"
    assert page.links["csv-link"] == f"/runs/{run_id}/export.csv"


def test_replay_page_shows_markup_from_a_run_as_text(tmp_path):
    require_binary("chromium")
    with Gunicorn(tmp_path / "gunicorn.log", env={"RUN_REGISTRY_ENGINE": "harness.fakes:FormulaEngine"}) as server:
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=x&seed=1").json()["runId"]
        dom = chromium_dom(f"{server.url}/runs/{run_id}/replay", tmp_path / "profile")
    page = Page(dom)
    assert page.body.get("data-replay") == "complete"
    assert "<img src=x onerror=" in page.text["transcript"]  # shown as text...
    assert "<img src=\"x\"" not in dom and page.title == f"Replay {run_id}"  # ...never parsed, never run
    assert "<b>metric</b>" in page.text["report"]


def test_replay_page_shows_a_running_run_live(tmp_path):
    require_binary("chromium")
    env = {"RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": "20"}  # about 3 s for the default engine's 147 events
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        started = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=7",
                       headers={"Prefer": "respond-async"})
        assert started.status == 202
        run_id = started.json()["runId"]
        dom = chromium_dom(f"{server.url}/runs/{run_id}/replay", tmp_path / "profile")
        events = http("GET", f"{server.url}/runs/{run_id}/events").json()["events"]
    page = Page(dom)
    assert page.body.get("data-live") == "true"  # it loaded while the run was running...
    assert page.body.get("data-replay") == "complete", page.text.get("status")  # ...and saw it to the end
    assert page.text["status"] == f"Run complete, watched live: {len(events)} of {len(events)} events."
    assert page.text["transcript"] == "".join(e["data"]["text"] for e in events if e["type"] == "token")
