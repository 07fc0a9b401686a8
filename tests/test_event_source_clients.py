"""Standard EventSource clients stop once a run has ended, done or failed, live or replayed: the npm
``eventsource`` package (Node) and Chromium's own, against a real gunicorn (docs/api.md, "Long runs")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.browser import chromium
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import require_binary

pytestmark = pytest.mark.server
EVENTSOURCE_VERSION = "4.1.1"
NPM_CACHE = ROOT / ".cache" / f"npm-eventsource-{EVENTSOURCE_VERSION}"
# How long the clients are watched after the run ends: past one reconnection (retry: 3000 ms),
# short of a second one.
WATCH_MS = 5000

NODE_CLIENTS = """
import { EventSource } from "eventsource";
const [base, ...paths] = process.argv.slice(2);
const results = await Promise.all(paths.map((path) => new Promise((done) => {
  let requests = 0;
  const seen = [];
  const source = new EventSource(base + path, {
    fetch: (input, init) => { requests += 1; return fetch(input, init); },
  });
  for (const type of ["start", "token", "report", "done", "error"]) {
    source.addEventListener(type, (event) => { if (event.data) seen.push([event.lastEventId, type, event.data]); });
  }
  setTimeout(() => { done({ path, requests, readyState: source.readyState, seen }); source.close(); }, WATCH_MS);
})));
console.log(JSON.stringify(results));
""".replace("WATCH_MS", str(WATCH_MS))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("event-source")
    env = {"RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine"}
    with Gunicorn(directory / "gunicorn.log", env=env) as running:
        yield running


@pytest.fixture(scope="module")
def eventsource_package() -> Path:
    """npm's eventsource, installed once into .cache/ (npm is how its users get it)."""
    require_binary("node")
    npm = require_binary("npm")
    if not (NPM_CACHE / "node_modules" / "eventsource" / "package.json").exists():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        (NPM_CACHE / "package.json").write_text('{"type": "module", "private": true}\n')
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", f"eventsource@{EVENTSOURCE_VERSION}"],
                       cwd=NPM_CACHE, check=True, capture_output=True, timeout=240)
    return NPM_CACHE


def runs_to_watch(server: Gunicorn) -> dict[str, str]:
    """Four runs by how they are watched: a done and a failed run, each replayed (ended before the
    client connects) and live (running when it connects)."""
    def start(scenario: str) -> str:
        reply = http("GET", f"{server.url}/runs/lookup?scenarioId={scenario}&seed={len(scenario)}",
                     headers={"Prefer": "respond-async"})
        assert reply.status in (200, 202), reply.body
        return reply.json()["runId"]

    def finished(run_id: str) -> None:
        http("GET", f"{server.url}/runs/{run_id}/events", headers={"Prefer": "wait=10"}, timeout=15)

    runs = {"done, replayed": start("paced-1-5"), "failed, replayed": start("paced-1-5-breaks")}
    for run_id in runs.values():
        finished(run_id)
    return runs | {"done, live": start("paced-150-8"), "failed, live": start("paced-150-8-breaks")}


def recorded(server: Gunicorn, run_id: str) -> int:
    """Events the run recorded (done, or failed after them)."""
    return http("GET", f"{server.url}/runs/{run_id}").json()["count"]


def test_the_npm_eventsource_client_stops_after_a_done_and_after_a_failed_run(server, eventsource_package):
    runs = runs_to_watch(server)
    script = eventsource_package / "watch.mjs"
    script.write_text(NODE_CLIENTS)
    paths = [f"/runs/{run_id}/events" for run_id in runs.values()]
    result = subprocess.run(["node", str(script), server.url, *paths], cwd=eventsource_package, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert result.returncode == 0, result.stderr
    watched = dict(zip(runs, json.loads(result.stdout), strict=True))
    for name, run_id in runs.items():
        client, count = watched[name], recorded(server, run_id)
        # One connection, then one reconnection, answered 204: the client is closed (2) for good.
        assert (client["requests"], client["readyState"]) == (2, 2), (name, client)
        events = client["seen"]
        assert [position for position, _, _ in events[:count]] == [str(n) for n in range(1, count + 1)], name
        if "failed" in name:
            assert len(events) == count + 1 and events[-1][:2] == ["end", "error"], (name, events[-1])
            assert json.loads(events[-1][2])["type"] == "ENGINE_ERROR"
        else:
            assert len(events) == count and events[-1][1] == "done", name


def test_chromiums_event_source_stops_after_a_done_and_after_a_failed_run(server):
    runs = runs_to_watch(server)
    with chromium() as browser:
        page = browser.new_page()
        requests: dict[str, int] = {}
        page.on("request", lambda request: requests.__setitem__(request.url, requests.get(request.url, 0) + 1))
        page.goto(f"{server.url}/healthz")  # same origin, nothing else on the page
        watched = page.evaluate("""([paths, watchMs]) => Promise.all(paths.map((path) => new Promise((done) => {
            const seen = [];
            const source = new EventSource(path);
            for (const type of ["start", "token", "report", "done", "error"]) {
              source.addEventListener(type, (event) => { if (event.data) seen.push([event.lastEventId, type]); });
            }
            setTimeout(() => { done({readyState: source.readyState, seen}); source.close(); }, watchMs);
        })))""", [[f"/runs/{run_id}/events" for run_id in runs.values()], WATCH_MS])
    for (name, run_id), client in zip(runs.items(), watched, strict=True):
        assert requests[f"{server.url}/runs/{run_id}/events"] == 2, (name, requests)
        assert client["readyState"] == 2, (name, client)
        expected = recorded(server, run_id) + (1 if "failed" in name else 0)
        assert len(client["seen"]) == expected and client["seen"][-1][1] == ("error" if "failed" in name else "done")


def test_the_npm_cache_is_outside_what_git_keeps():
    assert ".cache/" in (ROOT / ".gitignore").read_text().split()
    assert shutil.which("node") or os.environ.get("CI") != "true"
