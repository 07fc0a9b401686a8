"""HTTP engines: the Node.js example engine and a remote party that misbehaves (harness.http_engine),
behind the service in this process and on gunicorn's gevent worker."""

from __future__ import annotations

import hashlib
import http.client as http_client
import logging
import subprocess
import time
from pathlib import Path

import pytest

from app import create_app
from app.config import load_settings
from app.engine.pricing import PricingEngine
from app.models import canonical_json
from harness.fakes import transcript
from harness.http_engine import HttpEngineServer
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import free_port
from harness.servers import http
from harness.servers import require_binary
from harness.servers import wait_until

pytestmark = pytest.mark.server
TOKEN = "engine-token-0f9e8d7c"


@pytest.fixture(scope="module")
def node_http_engine():
    """examples/engines/http-engine.mjs on a free port, requiring a bearer token."""
    node = require_binary("node")
    port = free_port()
    command = [node, str(ROOT / "examples" / "engines" / "http-engine.mjs"), "--port", str(port)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                          env={"PATH": "/usr/bin:/bin", "ENGINE_TOKEN": TOKEN}) as engine:
        assert engine.stdout.readline().strip() == f"listening on http://127.0.0.1:{port}"
        yield f"http://127.0.0.1:{port}"
        engine.terminate()


@pytest.fixture
def remote():
    """A remote party in this process, on a free port: well-behaved or not, by scenarioId."""
    server = HttpEngineServer(free_port()).serve_in_background()
    yield server
    server.stop()


def client_of(url: str, **extra: str):
    env = {"RUN_REGISTRY_ENGINE": url, "ENGINE_CODE_HASH": "", "ENGINE_COMMIT_SHA": "deploy",
           "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0", **extra}
    return create_app(load_settings(env)).test_client()


def events_sha256(events: list) -> str:
    return hashlib.sha256(canonical_json(events)).hexdigest()


def test_the_node_http_engine_runs_once_per_key_with_its_token(node_http_engine, caplog):
    caplog.set_level(logging.DEBUG)
    client = client_of(node_http_engine, RUN_REGISTRY_ENGINE_TOKEN=TOKEN)
    first = client.get("/runs/lookup?scenarioId=pricing-v1&seed=42")
    assert first.status_code == 200 and first.get_json()["source"] == "new"
    assert client.get("/runs/lookup?scenarioId=pricing-v1&seed=42").get_json()["source"] == "cache"
    metadata = client.get(f"/runs/{first.get_json()['runId']}").get_json()
    assert metadata["eventsSha256"] == events_sha256(list(PricingEngine().run("pricing-v1", 42)))
    assert client.post(f"/runs/{first.get_json()['runId']}/verify").get_json()["reproducible"] is True
    ready = client.get("/readyz").get_json()
    assert ready["engine"] == {"kind": "http", "name": "pricing-simulator-node", "version": "1.2.0"}
    assert TOKEN not in caplog.text


def test_without_its_token_the_engine_is_unavailable_and_says_why(node_http_engine):
    client = client_of(node_http_engine)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["message"].startswith(f"The engine {node_http_engine} cannot be reached (GET /describe"
                                                  " answered 401: ")


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [("status500-x", "POST /run answered 500: the model crashed ?[31mhard?[0m"),
     ("html-x", "POST /run answered 'text/html', not text/event-stream or application/x-ndjson"),
     ("garble-x", "message 2 is not an event: its data is not JSON"),
     ("error-x", "message 2 is not an event: its type is error, which is the service's own (the end of a failed run)"),
     ("cut-x", "its answer was cut short")],
    ids=["refusal", "not-events", "malformed-event", "error-typed-event", "cut-short"],
)
def test_a_remote_engines_failure_fails_its_run_with_the_engines_own_words(remote, scenario, reason):
    client = client_of(f"http://127.0.0.1:{remote.server_port}")
    failed = client.get(f"/runs/lookup?scenarioId={scenario}&seed=1")
    assert failed.status_code == 500
    message = failed.get_json()["message"]
    assert message.startswith(f"The engine failed to run scenario {scenario} seed 1: {reason}"), message


def test_ndjson_answers_are_recorded_like_server_sent_events(remote):
    client = client_of(f"http://127.0.0.1:{remote.server_port}")
    for scenario in ("ndjson-a", "steady-a"):
        run_id = client.get(f"/runs/lookup?scenarioId={scenario}&seed=3").get_json()["runId"]
        events = client.get(f"/runs/{run_id}/events").get_json()["events"]
        assert events == transcript(scenario, 3)


def test_a_hung_remote_engine_is_cut_off_at_the_timeout(remote):
    client = client_of(f"http://127.0.0.1:{remote.server_port}", RUN_REGISTRY_ENGINE_TIMEOUT_S="1")
    failed = client.get("/runs/lookup?scenarioId=hang-x&seed=1")
    assert failed.get_json()["message"] == "The engine did not finish scenario hang-x seed 1 within 1 s"
    assert remote.disconnected.wait(5)  # the engine saw its client go: it may stop working


def test_an_unreachable_engine_starts_the_service_answers_503_and_counts_nothing(tmp_path, caplog):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client = client_of(url, RUN_REGISTRY_NEW_RUNS_PER_MINUTE="2")
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["message"].startswith(f"The engine {url} cannot be reached")
    refused = client.get("/runs/lookup?scenarioId=steady-a&seed=1")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
    assert refused.get_json()["type"] == "UNAVAILABLE" and url in refused.get_json()["message"]
    stats = client.get("/registry/stats").get_json()
    assert (stats["misses"], stats["total_entries"]) == (0, 0)
    # The engine in a process of its own, so that its end ends its connections too (kept alive).
    with subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "harness.http_engine", "--port", str(port)],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True) as engine:
        assert engine.stdout.readline().startswith("listening on")
        time.sleep(1.05)  # the engine is asked again at most once a second
        looked = client.get("/runs/lookup?scenarioId=steady-a&seed=1")
        assert looked.status_code == 200, looked.get_json()  # the first of two runs this client may start
        assert client.get("/readyz").status_code == 200
        engine.kill()
        engine.wait()
    # Gone again: cached runs are served as before; the run that meets it gone fails (the second
    # run), and then new runs are refused without being counted (no 429).
    assert client.get("/runs/lookup?scenarioId=steady-a&seed=1").get_json()["source"] == "cache"
    failed = client.get("/runs/lookup?scenarioId=steady-b&seed=1")
    assert failed.status_code == 500 and "it could not be reached" in failed.get_json()["message"]
    assert client.get("/runs/lookup?scenarioId=steady-c&seed=1").status_code == 503


def test_a_redeployed_engine_starts_new_runs_without_a_restart(remote, caplog):
    caplog.set_level(logging.INFO)
    client = client_of(f"http://127.0.0.1:{remote.server_port}", RUN_REGISTRY_ENGINE_DESCRIBE_S="0.2")
    before = client.get("/runs/lookup?scenarioId=steady-r&seed=1").get_json()["runId"]
    old_hash = client.get("/readyz").get_json()["engineCodeHash"]
    remote.code_digest = "sha256:two"
    time.sleep(0.25)
    client.get("/runs/lookup?scenarioId=steady-r&seed=1")  # due: described again in the background
    wait_until(lambda: client.get("/readyz").get_json()["engineCodeHash"] != old_hash, timeout=5)
    after = client.get("/runs/lookup?scenarioId=steady-r&seed=1").get_json()
    assert after["source"] == "new" and after["runId"] != before
    assert any("describes itself anew" in record.getMessage() and "sha256:two" in record.getMessage()
               for record in caplog.records)


def test_an_http_engine_streams_live_through_gunicorns_gevent_worker(tmp_path):
    port = free_port()
    with subprocess.Popen([str(Path(ROOT / ".venv" / "bin" / "python")), "-m", "harness.http_engine", "--port",
                           str(port), "--token", TOKEN], cwd=ROOT, stdout=subprocess.PIPE, text=True) as engine:
        try:
            assert engine.stdout.readline().startswith("listening on")
            env = {"RUN_REGISTRY_ENGINE": f"http://127.0.0.1:{port}", "RUN_REGISTRY_ENGINE_TOKEN": TOKEN,
                   "RUN_REGISTRY_ENGINE_TIMEOUT_S": "2"}
            with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
                run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=slow-g&seed=4",
                              headers={"Prefer": "respond-async"}).json()["runId"]
                host, server_port = server.url.removeprefix("http://").split(":")
                connection = http_client.HTTPConnection(host, int(server_port), timeout=30)
                connection.request("GET", f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
                arrivals = [time.monotonic() for line in connection.getresponse() if line.startswith(b"id: ")]
                connection.close()
                assert len(arrivals) == 5 and arrivals[-1] - arrivals[0] > 0.15  # one by one, 50 ms apart
                hung = http("GET", f"{server.url}/runs/lookup?scenarioId=hang-g&seed=1", timeout=30)
                assert hung.json()["message"] == "The engine did not finish scenario hang-g seed 1 within 2 s"
                for _ in range(20):
                    assert http("GET", f"{server.url}/runs/lookup?scenarioId=slow-g&seed=4").status == 200
                log = server.log()
            assert TOKEN not in log and "Traceback" not in log
        finally:
            engine.terminate()
