"""Standard EventSource clients stop once a run has ended, done or failed, live or replayed: the npm
``eventsource`` package (Node) and Chromium's own, against a real gunicorn (docs/api.md, "Long runs")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.browser import chromium
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import require_binary

pytestmark = pytest.mark.server
EVENTSOURCE_VERSION = "4.1.1"
# In the user's cache, as npm's own is: a fresh clone of the repository need not fetch it again.
NPM_CACHE = Path.home() / ".cache" / "run-registry" / f"npm-eventsource-{EVENTSOURCE_VERSION}"
# How long the clients are watched after the run ends: past one reconnection (retry: 3000 ms),
# short of a second one.
WATCH_MS = 4500

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
    """npm's eventsource, installed once into ~/.cache/run-registry/ (npm is how its users get it)."""
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
    return runs | {"done, live": start("paced-60-8"), "failed, live": start("paced-60-8-breaks")}


def recorded(server: Gunicorn, run_id: str) -> int:
    """Events the run recorded (done, or failed after them)."""
    return http("GET", f"{server.url}/runs/{run_id}").json()["count"]


def test_the_npm_eventsource_client_and_chromiums_stop_after_a_done_and_after_a_failed_run(
        server, eventsource_package):
    """Both clients watch the same four runs at once (each watch lasts past one reconnection)."""
    runs = runs_to_watch(server)
    script = eventsource_package / "watch.mjs"
    script.write_text(NODE_CLIENTS)
    paths = [f"/runs/{run_id}/events" for run_id in runs.values()]
    quiet = {**os.environ, "NODE_NO_WARNINGS": "1"}
    with subprocess.Popen(["node", str(script), server.url, *paths], cwd=eventsource_package, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=quiet) as node:  # closed if skipped
        with chromium() as browser:
            page = browser.new_page()
            requests: dict[str, int] = {}
            page.on("request", lambda request: requests.__setitem__(request.url, requests.get(request.url, 0) + 1))
            page.goto(f"{server.url}/healthz")  # same origin, nothing else on the page
            in_browser = page.evaluate("""([paths, watchMs]) => Promise.all(paths.map((path) => new Promise((done) => {
                const seen = [];
                const source = new EventSource(path);
                for (const type of ["start", "token", "report", "done", "error"]) {
                  source.addEventListener(type, (event) => { if (event.data) seen.push([event.lastEventId, type]); });
                }
                setTimeout(() => { done({readyState: source.readyState, seen}); source.close(); }, watchMs);
            })))""", [paths, WATCH_MS])
        out, err = node.communicate(timeout=60)
    assert node.returncode == 0, err
    from_node = dict(zip(runs, json.loads(out), strict=True))
    for (name, run_id), client in zip(runs.items(), in_browser, strict=True):
        count = recorded(server, run_id)
        npm_client = from_node[name]
        # One connection, then one reconnection, answered 204: the client is closed (2) for good.
        assert (npm_client["requests"], npm_client["readyState"]) == (2, 2), (name, npm_client)
        assert (requests[f"{server.url}/runs/{run_id}/events"], client["readyState"]) == (2, 2), (name, requests)
        events = npm_client["seen"]
        assert [position for position, _, _ in events[:count]] == [str(n) for n in range(1, count + 1)], name
        assert [position for position, _ in client["seen"][:count]] == [str(n) for n in range(1, count + 1)], name
        if "failed" in name:
            assert len(events) == count + 1 and events[-1][:2] == ["end", "error"], (name, events[-1])
            assert json.loads(events[-1][2])["type"] == "ENGINE_ERROR"
            assert len(client["seen"]) == count + 1 and client["seen"][-1] == ["end", "error"]
        else:
            assert len(events) == count and events[-1][1] == "done", name
            assert len(client["seen"]) == count and client["seen"][-1][1] == "done"


