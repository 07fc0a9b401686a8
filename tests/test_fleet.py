"""The fleet (docs/deploying.md): runs executed by the Procfile's workers through RQ, on real
redis-server, web and worker processes started from the Procfile's lines as a Heroku-style host
starts them; rolling deploys; executors that die."""

from __future__ import annotations

import http.client as http_client
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness.servers import GUNICORN
from harness.servers import ProcfileProcess
from harness.servers import http
from harness.servers import wait_until

pytestmark = pytest.mark.server

SSE = {"Accept": "text/event-stream"}


def fleet_env(redis_url: str, executions: Path, **extra: str) -> dict[str, str]:
    return {"RUN_REGISTRY_URL": redis_url, "RUN_REGISTRY_EXECUTION": "queue", "WEB_CONCURRENCY": "1",
            "RUN_REGISTRY_ENGINE": "harness.fakes:FileCountingEngine", "RUN_REGISTRY_TEST_EXECUTIONS": str(executions),
            "RUN_REGISTRY_KEEPALIVE_S": "0.5", "RUN_REGISTRY_LEASE_S": "2", **extra}


def executions(path: Path) -> list[tuple[int, str, int, int]]:
    """(pid, scenario, seed, parent pid) of every engine execution so far."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(pid), scenario, int(seed), int(parent)) for pid, scenario, seed, parent in rows]


def stream(url: str, run_id: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    connection = http_client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", f"/runs/{run_id}/events", headers=SSE)
    body = connection.getresponse().read()
    connection.close()
    return body


def test_a_queued_run_executes_on_a_worker_and_is_watched_live_from_the_web(tmp_path, redis_url):
    env = fleet_env(redis_url, tmp_path / "executions", RUN_REGISTRY_ENGINE_EVENT_DELAY_MS="150")
    with (ProcfileProcess("worker", tmp_path / "worker.log", env) as worker,
          ProcfileProcess("web", tmp_path / "web.log", env) as web):
        ready = http("GET", f"{web.url}/readyz").json()
        assert (ready["execution"], ready["workers"]) == ("queue", 1)
        rq_info = subprocess.run([str(GUNICORN.with_name("rq")), "info", "--url", redis_url, "--only-queues"],
                                 capture_output=True, text=True, timeout=30)
        assert "run-registry" in rq_info.stdout, rq_info.stdout + rq_info.stderr  # listed before its first job
        started = http("GET", f"{web.url}/runs/lookup?scenarioId=queued&seed=1", headers={"Prefer": "respond-async"})
        run_id = started.json()["runId"]
        assert (started.status, started.json()["source"]) == (202, "new")
        live = stream(web.url, run_id)
        assert live.replace(b": keepalive\n\n", b"") == stream(web.url, run_id)
        assert live.count(b"id: ") == 5
        [(pid, scenario, seed, parent)] = executions(tmp_path / "executions")
        assert (scenario, seed, parent) == ("queued", 1, worker.pid)  # a work-horse of the worker...
        assert pid not in web.children() and pid != web.pid  # ...and no web process executed it
        verified = http("POST", f"{web.url}/runs/{run_id}/verify").json()
        assert verified["reproducible"] is True
        assert [row[3] for row in executions(tmp_path / "executions")] == [worker.pid, worker.pid]
        metrics = http("GET", f"{web.url}/metrics").body.decode()
        assert "run_registry_workers 1.0" in metrics and "run_registry_queue_depth 0.0" in metrics
        assert 'run_registry_engine_duration_seconds_count{outcome="succeeded"} 2.0' in metrics
        assert "run_registry_engine_executions_total 2.0" in metrics
        stats = http("GET", f"{web.url}/registry/stats").json()
        assert (stats["execution"], stats["workers"], stats["running"]) == ("queue", 1, 0)


def test_during_a_rolling_deploy_each_worker_executes_only_its_own_codes_runs(tmp_path, redis_url):
    records = tmp_path / "executions"
    old = fleet_env(redis_url, records, ENGINE_CODE_HASH="deploy-a")
    new = fleet_env(redis_url, records, ENGINE_CODE_HASH="deploy-b")
    with (ProcfileProcess("worker", tmp_path / "worker-a.log", old) as worker_a,
          ProcfileProcess("worker", tmp_path / "worker-b.log", new) as worker_b,
          ProcfileProcess("web", tmp_path / "web-a.log", old) as web_a,
          ProcfileProcess("web", tmp_path / "web-b.log", new) as web_b):
        for seed in range(4):
            for web in (web_a, web_b):
                reply = http("GET", f"{web.url}/runs/lookup?scenarioId=rolling&seed={seed}", timeout=30)
                assert reply.status == 200, reply.body
        for web, code in ((web_a, "deploy-a"), (web_b, "deploy-b")):
            run_id = http("GET", f"{web.url}/runs/lookup?scenarioId=rolling&seed=0").json()["runId"]
            assert http("GET", f"{web.url}/runs/{run_id}").json()["engineCodeHash"] == code
    parents = [parent for *_, parent in executions(records)]
    assert sorted(parents) == sorted([worker_a.pid] * 4 + [worker_b.pid] * 4)
    log_a, log_b = (tmp_path / "worker-a.log").read_text(), (tmp_path / "worker-b.log").read_text()
    assert "engineCodeHash deploy-a" in log_a and "engineCodeHash deploy-b" in log_b


@pytest.mark.parametrize("victim", ["worker", "work-horse"])
def test_a_run_whose_executor_is_killed_fails_within_the_bound_and_the_key_runs_anew(tmp_path, redis_url, victim):
    records = tmp_path / "executions"
    env = fleet_env(redis_url, records, RUN_REGISTRY_ENGINE_EVENT_DELAY_MS="1000")  # 5 events, 5 s
    with ProcfileProcess("web", tmp_path / "web.log", env) as web:
        worker = ProcfileProcess("worker", tmp_path / "worker.log", env).start()
        try:
            run_id = http("GET", f"{web.url}/runs/lookup?scenarioId=doomed&seed=1",
                          headers={"Prefer": "respond-async"}).json()["runId"]
            watched: list[bytes] = []
            watcher = threading.Thread(target=lambda: watched.append(stream(web.url, run_id)))
            watcher.start()
            [(horse, *_)] = wait_until(lambda: executions(records))
            wait_until(lambda: http("GET", f"{web.url}/runs/{run_id}").json()["count"] >= 1)
            killed_at = time.monotonic()
            os.kill(worker.pid if victim == "worker" else horse, signal.SIGKILL)
            watcher.join(timeout=60)
            ended = time.monotonic() - killed_at
            metadata = http("GET", f"{web.url}/runs/{run_id}").json()
            assert metadata["status"] == "failed", metadata
            assert metadata["error"]["message"].startswith("The process executing this run stopped")
            assert watched[0].rstrip().endswith(b'"}') and b"event: error\n" in watched[0]
            assert ended < 10  # the lease (2 s here) and a reap (every 2 s), with room for a loaded machine
            if victim == "worker":
                worker.stop(signal.SIGKILL)
                worker = ProcfileProcess("worker", tmp_path / "worker-2.log", env).start()
            again = http("GET", f"{web.url}/runs/lookup?scenarioId=doomed&seed=1", headers={"Prefer": "wait=0"})
            assert again.json()["source"] == "new" and again.json()["runId"] != run_id
        finally:
            worker.stop(signal.SIGKILL)


def test_a_queued_run_that_no_worker_takes_fails_after_the_queue_wait(tmp_path, redis_url):
    env = fleet_env(redis_url, tmp_path / "executions", RUN_REGISTRY_QUEUE_WAIT_S="1")
    with ProcfileProcess("web", tmp_path / "web.log", env) as web:
        ready = http("GET", f"{web.url}/readyz").json()
        assert ready["workers"] == 0
        run_id = http("GET", f"{web.url}/runs/lookup?scenarioId=orphan&seed=1",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        failed = wait_until(lambda: (m := http("GET", f"{web.url}/runs/{run_id}").json())["status"] == "failed" and m,
                          timeout=20)
        assert failed["error"]["message"].startswith("No worker took this run in time")
        with ProcfileProcess("worker", tmp_path / "worker.log", env):  # a worker arriving late executes nothing
            time.sleep(1)
    assert executions(tmp_path / "executions") == []


def test_in_local_mode_a_killed_web_process_fails_its_run_and_another_web_process_tells_its_clients(
        tmp_path, redis_url):
    env = {"RUN_REGISTRY_URL": redis_url, "WEB_CONCURRENCY": "1", "RUN_REGISTRY_ENGINE": "harness.fakes:FakeEngine",
           "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": "1000", "RUN_REGISTRY_LEASE_S": "2"}
    with (ProcfileProcess("web", tmp_path / "executor.log", env) as executor,
          ProcfileProcess("web", tmp_path / "watcher.log", env) as watcher):
        run_id = http("GET", f"{executor.url}/runs/lookup?scenarioId=local&seed=1",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        watched: list[bytes] = []
        reader = threading.Thread(target=lambda: watched.append(stream(watcher.url, run_id)))
        reader.start()
        wait_until(lambda: http("GET", f"{watcher.url}/runs/{run_id}").json()["count"] >= 1)
        [gunicorn_worker] = executor.children()
        os.kill(gunicorn_worker, signal.SIGKILL)
        reader.join(timeout=60)
        assert watched and b"event: error\n" in watched[0]
        metadata = http("GET", f"{watcher.url}/runs/{run_id}").json()
        assert metadata["status"] == "failed" and "stopped before it ended" in metadata["error"]["message"]


def test_a_worker_executes_only_the_services_own_jobs_and_deletes_the_rest(tmp_path, redis_url):
    import redis
    from rq import Callback
    from rq import Queue
    from rq.serializers import JSONSerializer

    env = fleet_env(redis_url, tmp_path / "executions")
    marker = tmp_path / "owned"
    connection = redis.Redis.from_url(redis_url)
    name = "run-registry:runs:procfile-test"  # the hash is public at /readyz: so is the queue's name
    with (ProcfileProcess("worker", tmp_path / "worker.log", env) as worker,
          ProcfileProcess("web", tmp_path / "web.log", env) as web):
        pickled, json_jobs = Queue(name, connection=connection), Queue(name, connection=connection,
                                                                      serializer=JSONSerializer)
        foreign = [
            pickled.enqueue("os.system", f"touch {marker}-pickled"),  # RQ's default serializer
            json_jobs.enqueue("os.system", f"touch {marker}-json"),
            json_jobs.enqueue_call("app.worker.execute_run", args=(f"run_x_1_1; touch {marker}", "a" * 32, "h",
                                                                    "e", "1")),
            json_jobs.enqueue_call("app.worker.reproduce_run", args=("a", 1, "procfile-test", "run_a_1_1"),
                                   on_success=Callback("os.system")),
            json_jobs.enqueue_call("app.worker.reproduce_run", args=("a", True, "procfile-test", "run_a_1_1")),
        ]
        wait_until(lambda: worker.log().count("refused and deleted") == len(foreign), timeout=30, every=0.05)
        # Its own jobs still run: a queued run, and a verification.
        run_id = http("GET", f"{web.url}/runs/lookup?scenarioId=own&seed=1", timeout=30).json()["runId"]
        assert http("POST", f"{web.url}/runs/{run_id}/verify", timeout=30).json()["reproducible"] is True
        assert worker.process.poll() is None
        log = worker.log()
    assert not list(tmp_path.glob("owned*"))
    assert "it calls 'os.system', not one of this service's jobs" in log and "its data is not a JSON job" in log
    assert "it asks for more than a run (fields success_callback_timeout)" in log
    assert log.count("its arguments are not those of app.worker") == 2
    assert all(not connection.exists(f"rq:job:{job.id}") for job in foreign)
    assert [row[1:3] for row in executions(tmp_path / "executions")] == [("own", 1), ("own", 1)]


def test_a_worker_registers_again_after_redis_restarts_without_its_data(tmp_path):
    from harness.servers import RedisServer

    redis_server = RedisServer(tmp_path).start()
    env = fleet_env(redis_server.url, tmp_path / "executions")
    try:
        with (ProcfileProcess("worker", tmp_path / "worker.log", env) as worker,
              ProcfileProcess("web", tmp_path / "web.log", env) as web):
            assert http("GET", f"{web.url}/readyz").json()["workers"] == 1
            redis_server.stop()
            redis_server = RedisServer(tmp_path, port=redis_server.port).start()  # empty: nothing kept on disk
            wait_until(lambda: http("GET", f"{web.url}/readyz").json().get("workers") == 1, timeout=30, every=0.2)
            assert http("GET", f"{web.url}/registry/stats").json()["workers"] == 1
            assert "run_registry_workers 1.0" in http("GET", f"{web.url}/metrics").body.decode()
            assert http("GET", f"{web.url}/runs/lookup?scenarioId=after&seed=1", timeout=30).json()["source"] == "new"
            assert "registered again" in worker.log()
    finally:
        redis_server.stop()
