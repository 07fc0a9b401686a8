"""Process engines where they run for real: on a web process's engine threads under gunicorn's
gevent worker, on an RQ worker of the fleet, and in ``run-registry check-engine``; the Node.js
example engine, and engines that hang, crash, garble and flood."""

from __future__ import annotations

import hashlib
import http.client as http_client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.engine.pricing import PricingEngine
from app.models import canonical_json
from harness.servers import GUNICORN
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import ProcfileProcess
from harness.servers import http
from harness.servers import require_binary
from harness.servers import running_processes
from harness.servers import wait_until

pytestmark = pytest.mark.server
PYTHON = os.path.realpath(sys.executable)
RUN_REGISTRY = str(GUNICORN.with_name("run-registry"))
SSE = {"Accept": "text/event-stream"}


@pytest.fixture(scope="module")
def node() -> str:
    return require_binary("node")


@pytest.fixture(scope="module")
def node_engine(node, tmp_path_factory):
    """The example Node.js engine, copied into a directory of this module's (its processes are found by it)."""
    directory = tmp_path_factory.mktemp("node-engine")
    for name in ("pricing.mjs", "process-engine.mjs"):
        shutil.copy(ROOT / "examples" / "engines" / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def hostile_engine(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile-engine")
    shutil.copy(ROOT / "harness" / "engines" / "hostile.py", directory / "engine.py")
    return directory / "engine.py"


@pytest.fixture(scope="module")
def node_web(node_engine, tmp_path_factory):
    """gunicorn's gevent worker running the Node.js engine, its events paced (the engine's own
    variable, passed by RUN_REGISTRY_ENGINE_ENV) so that a run is watched live."""
    env = {"RUN_REGISTRY_ENGINE": f"command:node {node_engine}/process-engine.mjs",
           "RUN_REGISTRY_ENGINE_ENV": "PRICING_EVENT_DELAY_MS", "PRICING_EVENT_DELAY_MS": "2"}
    with Gunicorn(tmp_path_factory.mktemp("node-web") / "gunicorn.log", env=env) as server:
        yield server


@pytest.fixture(scope="module")
def hostile_web(hostile_engine, tmp_path_factory):
    """gunicorn's gevent worker running the hostile engine, its behaviour chosen by the scenarioId."""
    env = {"RUN_REGISTRY_ENGINE": f"command:{PYTHON} -I -S {hostile_engine} by-scenario",
           "RUN_REGISTRY_ENGINE_TIMEOUT_S": "2", "RUN_REGISTRY_LOOKUP_WAIT_S": "5"}
    with Gunicorn(tmp_path_factory.mktemp("hostile-web") / "gunicorn.log", env=env) as server:
        yield server


def python_transcript(scenario_id: str, seed: int) -> str:
    """eventsSha256 of the Python default engine's transcript for the key."""
    return hashlib.sha256(canonical_json(list(PricingEngine().run(scenario_id, seed)))).hexdigest()


def test_the_node_engine_runs_once_per_key_on_the_gevent_worker_and_tells_the_same_story(node_web):
    looked = http("GET", f"{node_web.url}/runs/lookup?scenarioId=pricing-v1&seed=42", timeout=30)
    assert looked.status == 200 and looked.json()["source"] == "new"
    run_id = looked.json()["runId"]
    again = http("GET", f"{node_web.url}/runs/lookup?scenarioId=pricing-v1&seed=42")
    assert again.json() == {"runId": run_id, "source": "cache"}
    metadata = http("GET", f"{node_web.url}/runs/{run_id}").json()
    assert metadata["eventsSha256"] == python_transcript("pricing-v1", 42)  # byte for byte the Python engine's
    verified = http("POST", f"{node_web.url}/runs/{run_id}/verify", timeout=30).json()
    assert verified["reproducible"] is True and verified["determinism"]["status"] == "reproduced"
    ready = http("GET", f"{node_web.url}/readyz").json()
    assert ready["engine"] == {"kind": "process", "name": "pricing-simulator-node", "version": "1.2.0"}


def test_a_node_engines_events_reach_a_live_client_as_the_engine_writes_them(node_web):
    started = http("GET", f"{node_web.url}/runs/lookup?scenarioId=live-node&seed=5",
                   headers={"Prefer": "respond-async"}).json()
    host, port = node_web.url.removeprefix("http://").split(":")
    connection = http_client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", f"/runs/{started['runId']}/events", headers=SSE)
    response = connection.getresponse()
    arrivals = []
    while line := response.readline():
        if line.startswith(b"id: "):
            arrivals.append(time.monotonic())
    connection.close()
    assert len(arrivals) == len(list(PricingEngine().run("live-node", 5)))
    assert arrivals[-1] - arrivals[0] > 0.2  # 2 ms before each event: they came one by one, not at the end


def test_exit_statuses_are_read_right_on_the_gevent_workers_engine_threads(hostile_web):
    """gevent's SIGCHLD handler would reap the engines first, and their statuses would be lost."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda seed: http("GET", f"{hostile_web.url}/runs/lookup?scenarioId=crash-s&seed={seed}", timeout=30),
            range(40)))
    assert {answer.status for answer in answers} == {500}
    assert all(answer.json()["message"].endswith(
        ": it exited with status 3; its last line on standard error: ValueError: the model blew up ?[2J")
        for answer in answers)


@pytest.mark.parametrize("behaviour", ["hang", "crash", "garble", "flood", "stubborn"])
def test_a_misbehaving_engine_leaves_the_service_answering_promptly_and_nothing_running(
    hostile_web, hostile_engine, behaviour
):
    cached = http("GET", f"{hostile_web.url}/runs/lookup?scenarioId=steady-{behaviour}&seed=1").json()["runId"]
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(http, "GET", f"{hostile_web.url}/runs/lookup?scenarioId={behaviour}-x&seed={seed}",
                            timeout=30) for seed in range(4)]
        slowest = 0.0
        while not all(run.done() for run in runs):
            for path in ("/healthz", f"/runs/lookup?scenarioId=steady-{behaviour}&seed=1"):
                started = time.monotonic()
                answer = http("GET", hostile_web.url + path)
                slowest = max(slowest, time.monotonic() - started)
                assert answer.status == 200
            assert http("GET", f"{hostile_web.url}/runs/lookup?scenarioId=steady-{behaviour}&seed=1").json() == {
                "runId": cached, "source": "cache"}
            time.sleep(0.02)
    # Not a speed figure: a hub blocked on an engine's pipe would hold every answer for the whole
    # 2 s engine timeout (a hanging engine) or more (a stubborn one waits for its SIGKILL), while a
    # loaded machine (a slow CI box, another test process) took 0.50 s at worst when it was served.
    assert slowest < 1.5, slowest
    outcomes = [run.result() for run in runs]
    if behaviour == "flood":
        assert {outcome.status for outcome in outcomes} == {200}
        flooded = {outcome.json()["runId"] for outcome in outcomes}
        lines = [json.loads(line) for line in hostile_web.log().splitlines() if '"stream": "stderr"' in line]
        per_run = [sum(1 for line in lines if line["runId"] == run_id) for run_id in flooded]
        assert per_run == [101] * 4  # 100 of the 5,000 lines, and one that says how many more there were
    else:
        assert {outcome.status for outcome in outcomes} == {500}
    # stubborn ignores SIGTERM: SIGKILL ends it 5 s after the timeout's SIGTERM
    wait_until(lambda: running_processes(str(hostile_engine)) == [], timeout=15)


def test_the_web_process_stops_its_engines_when_it_stops_and_when_its_worker_is_killed(hostile_engine, tmp_path):
    env = {"RUN_REGISTRY_ENGINE": f"command:{PYTHON} -I -S {hostile_engine} by-scenario"}
    for stop in ("SIGTERM to gunicorn", "SIGKILL to its worker"):
        with Gunicorn(tmp_path / f"{stop}.log", env=env) as server:
            for seed in range(3):
                http("GET", f"{server.url}/runs/lookup?scenarioId=hang-stop&seed={seed}",
                     headers={"Prefer": "respond-async"})
            wait_until(lambda: len(running_processes(str(hostile_engine))) == 6, timeout=15)  # 3 engines, 3 children
            if stop == "SIGTERM to gunicorn":
                server.stop(signal.SIGTERM)
            else:
                for worker in server.worker_pids():
                    os.kill(worker, signal.SIGKILL)  # no worker_exit: the warden stops them
            wait_until(lambda: running_processes(str(hostile_engine)) == [], timeout=15)


def test_the_engine_sees_nothing_of_the_services_secrets_in_a_real_web_process(hostile_engine, tmp_path):
    from app.access import new_key

    secret, entry = new_key("ci", "read+run")
    env = {"RUN_REGISTRY_ENGINE": f"command:{PYTHON} -I -S {hostile_engine} by-scenario",
           "RUN_REGISTRY_API_KEYS": entry, "REDIS_URL": "redis://:hunter2@127.0.0.1:1/0",
           "RUN_REGISTRY_URL": "memory://", "RUN_REGISTRY_ENGINE_TOKEN": "hunter2", "DATABASE_PASSWORD": "hunter2",
           "LANG": "C.UTF-8"}
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        headers = {"Authorization": f"Bearer {secret}"}
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=environment-a&seed=1", headers=headers).json()
        events = http("GET", f"{server.url}/runs/{run_id['runId']}/events", headers=headers).json()["events"]
    seen = events[1]["data"]["environment"]
    assert set(seen) <= {"PATH", "HOME", "LANG"} and "PATH" in seen
    assert not any(part in json.dumps(seen) for part in ("hunter2", secret, "RUN_REGISTRY"))


def test_a_queue_worker_runs_the_node_engine_and_its_death_stops_the_engine(node_engine, hostile_engine, redis_url,
                                                                             tmp_path):
    env = {"RUN_REGISTRY_URL": redis_url, "RUN_REGISTRY_EXECUTION": "queue", "WEB_CONCURRENCY": "1",
           "RUN_REGISTRY_ENGINE": f"command:node {node_engine}/process-engine.mjs", "RUN_REGISTRY_LEASE_S": "2"}
    with (ProcfileProcess("worker", tmp_path / "worker.log", env) as worker,
          ProcfileProcess("web", tmp_path / "web.log", env) as web):
        looked = http("GET", f"{web.url}/runs/lookup?scenarioId=queued-node&seed=9", timeout=30)
        assert looked.status == 200, looked.body
        metadata = http("GET", f"{web.url}/runs/{looked.json()['runId']}").json()
        assert metadata["eventsSha256"] == python_transcript("queued-node", 9)
        assert "engine ran scenario queued-node seed 9" in worker.log()
    hang = {**env, "RUN_REGISTRY_ENGINE": f"command:{PYTHON} -I -S {hostile_engine} by-scenario",
            "RUN_REGISTRY_ENGINE_TIMEOUT_S": "60"}
    for stop in (signal.SIGTERM, signal.SIGKILL):
        with (ProcfileProcess("worker", tmp_path / f"worker-{stop.name}.log", hang) as worker,
              ProcfileProcess("web", tmp_path / f"web-{stop.name}.log", hang) as web):
            run_id = http("GET", f"{web.url}/runs/lookup?scenarioId=hang-queued&seed={stop.value}",
                          headers={"Prefer": "respond-async"}).json()["runId"]
            wait_until(lambda: len(running_processes(str(hostile_engine))) == 2, timeout=15)  # its engine and child
            worker.stop(stop)
            wait_until(lambda: running_processes(str(hostile_engine)) == [], timeout=20)
            run = f"{web.url}/runs/{run_id}"
            wait_until(lambda run=run: http("GET", run).json()["status"] == "failed", timeout=15)
            assert http("GET", run).json()["error"]["type"] == "ENGINE_ERROR"


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([RUN_REGISTRY, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")})


def test_check_engine_takes_a_process_engine(node_engine, hostile_engine):
    checked = cli("check-engine", f"command:node {node_engine}/process-engine.mjs", "--scenario", "pricing-v1")
    assert checked.returncode == 0, checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0].endswith("pricing-simulator-node 1.2.0 (process engine), scenario pricing-v1 seed 42")
    assert f"eventsSha256 {python_transcript('pricing-v1', 42)}" in lines[1] and lines[1] == lines[2].replace(
        "execution 2", "execution 1")
    assert lines[-1].startswith("  engineCodeHash: ")
    drifting = cli("check-engine", f"command:{PYTHON} -I -S {hostile_engine} seed-from-clock")
    assert drifting.returncode == 1 and "not deterministic: two executions of scenario check-engine seed 42" \
        in drifting.stderr
    crashing = cli("check-engine", f"command:{PYTHON} -I -S {hostile_engine} crash")
    assert crashing.returncode == 1 and crashing.stderr.count("\n") == 1
    assert "the engine failed: it exited with status 3; its last line on standard error: ValueError" in crashing.stderr
    hung = cli("check-engine", f"command:{PYTHON} -I -S {hostile_engine} hang", "--timeout", "1")
    assert hung.returncode == 1 and "did not finish scenario check-engine seed 42 within 1 s" in hung.stderr
    wait_until(lambda: running_processes(str(hostile_engine)) == [], timeout=10)
    unknown = cli("check-engine", "inventory")
    assert unknown.returncode == 1
    assert "name one as module:attribute (a Python engine, such as inventory:Engine)" in unknown.stderr
