"""The worker's side doors: RQ's maintenance acts on the jobs it finds in a queue's registries (it
calls an abandoned started job's failure callback and sends its webhooks, it fails a job stuck in
the intermediate queue, it enqueues ready jobs), and anyone who can write to the Redis can plant
one there. Planted jobs must meet the same refusal as jobs on the queue."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.servers import ProcfileProcess
from harness.servers import http
from harness.servers import wait_until

pytestmark = pytest.mark.server

CODE_HASH = "side-door-test"
QUEUE = f"run-registry:runs:{CODE_HASH}"  # the default prefix, and the pinned engineCodeHash as the queue's key
# Where RQ's maintenance looks (wip: the started-job registry; ready: jobs whose dependencies are met).
STARTED, READY, INTERMEDIATE = f"rq:wip:{QUEUE}", f"rq:ready:{QUEUE}", f"rq:queue:{QUEUE}:intermediate"
# Where it does not look: it drops failed and finished entries by score, unread; the rest it never reads.
UNREAD = {"failed": f"rq:failed:{QUEUE}", "finished": f"rq:finished:{QUEUE}", "deferred": f"rq:deferred:{QUEUE}",
          "scheduled": f"rq:scheduled:{QUEUE}", "canceled": f"rq:canceled:{QUEUE}"}
LONG_AGO = 1  # a registry score (a Unix time): expired


def door_module(directory: Path, name: str, opened: Path) -> str:
    """A module that records, in ``opened``, its import and any call of its ``door``; its name."""
    (directory / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(opened / name)!r}).write_text('imported')\n"
        "def door(*args, **kwargs):\n"
        f"    Path({str(opened / name)!r}).write_text('called')\n"
    )
    return f"{name}.door"


def plant(connection, job_id: str, func: str, status: str, callback: str | None, webhook: str | None) -> None:
    """A job hash as RQ writes one (JSON) naming ``func``, and ``callback`` as each of its callbacks
    and ``webhook`` for each of its ends, if given."""
    fields = {"data": json.dumps([func, None, [], {}]), "origin": QUEUE, "status": status, "description": "planted",
              "created_at": "2026-01-01T00:00:00.000000Z", "timeout": 180}
    if callback:
        fields.update(success_callback_name=callback, failure_callback_name=callback, stopped_callback_name=callback)
    if webhook:
        fields["webhooks"] = json.dumps([{"url": f"{webhook}/{job_id}", "job_status": end, "method": "GET",
                                          "headers": None, "timeout": 5} for end in ("finished", "failed")])
    connection.hset(f"rq:job:{job_id}", mapping=fields)


class Listener(ThreadingHTTPServer):
    """Where the planted webhooks point: it records the paths it is asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.asked.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def test_jobs_planted_where_the_workers_maintenance_looks_are_refused_and_nothing_they_name_runs(
        tmp_path, redis_url):
    import redis

    modules, opened = tmp_path / "modules", tmp_path / "opened"
    modules.mkdir()
    opened.mkdir()
    connection = redis.Redis.from_url(redis_url)
    listener = Listener()
    threading.Thread(target=listener.serve_forever, daemon=True).start()

    def door(name: str) -> str:
        return door_module(modules, name.replace("-", "_"), opened)

    def job(job_id: str, status: str, callback: str | None, webhook: bool = False) -> str:
        plant(connection, job_id, door(f"func-{job_id}"), status, callback, listener.url if webhook else None)
        return job_id

    # Abandoned jobs: their executions expired long ago.
    started = [job("planted-started", "started", door("callback-planted-started")),
               job("planted-started-print", "started", "builtins.print"),
               job("planted-started-webhook", "started", None, webhook=True)]
    connection.zadd(STARTED, {f"{job_id}:execution": LONG_AGO for job_id in started})
    stuck = job("planted-intermediate", "queued", door("callback-planted-intermediate"), webhook=True)
    connection.rpush(INTERMEDIATE, stuck)
    # Stuck for an hour: RQ fails a job it first saw in the intermediate queue over a minute ago.
    connection.set(f"{INTERMEDIATE}:first_seen:{stuck}", time.time() - 3600)
    ready = job("planted-ready", "ready_to_enqueue", None)
    connection.zadd(READY, {ready: LONG_AGO})
    for status, key in UNREAD.items():
        unread = job(f"planted-{status}", status, door(f"callback-planted-{status}"), webhook=True)
        connection.zadd(key, {unread: LONG_AGO})

    try:
        log = worker_log_after_its_maintenance(tmp_path, redis_url, pythonpath=modules)
    finally:
        listener.shutdown()
        listener.server_close()
    # Nothing imported or called, no webhook sent, nothing printed (print(job, ...) would show
    # "<Job planted-started-print: planted>").
    doors = {path.name: path.read_text() for path in opened.iterdir()}
    printed = [line for line in log.splitlines() if "planted>" in line]
    assert (doors, listener.asked, printed) == ({}, [], [])
    refused = [*started, stuck, ready]
    assert all(f"job {job_id} refused and deleted" in log for job_id in refused), log
    assert not any(connection.exists(f"rq:job:{job_id}") for job_id in refused)


def test_entries_rq_cannot_read_where_the_workers_maintenance_looks_do_not_stop_the_worker(tmp_path, redis_url):
    import redis

    connection = redis.Redis.from_url(redis_url)
    own = json.dumps(["app.worker.execute_run", None, [], {}])
    connection.zadd(STARTED, {"planted:not:rqs": LONG_AGO, "planted-unread:execution": LONG_AGO})
    connection.hset("rq:job:planted-unread", mapping={"data": own, "origin": QUEUE, "status": "unheard-of"})
    connection.rpush(INTERMEDIATE, "planted id")
    connection.zadd(READY, {"planted/id": LONG_AGO})
    connection.hset("rq:job:planted/id", mapping={"data": own, "origin": QUEUE, "status": "ready_to_enqueue"})

    log = worker_log_after_its_maintenance(tmp_path, redis_url)
    assert f"entry planted:not:rqs of {STARTED} refused and removed: it is not RQ's" in log
    assert f"job planted-unread refused and deleted (left in {STARTED}): RQ cannot read it (ValueError)" in log
    assert f"job planted id refused and deleted (left in {INTERMEDIATE}): its id is not RQ's" in log
    assert f"job planted/id refused and deleted (left in {READY}): its id is not RQ's" in log
    assert not connection.exists("rq:job:planted-unread", "rq:job:planted/id")


def worker_log_after_its_maintenance(tmp_path: Path, redis_url: str, pythonpath: Path | None = None) -> str:
    """Start a worker and a web process, wait for the worker's start-up maintenance to have
    emptied the places it looks, check that the worker still runs and executes its own jobs, and
    stop them; the worker's whole log."""
    import redis

    env = {"RUN_REGISTRY_URL": redis_url, "RUN_REGISTRY_EXECUTION": "queue", "WEB_CONCURRENCY": "1",
           "ENGINE_CODE_HASH": CODE_HASH}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")]))
    connection = redis.Redis.from_url(redis_url)
    with (ProcfileProcess("worker", tmp_path / "worker.log", env) as worker,
          ProcfileProcess("web", tmp_path / "web.log", env) as web):
        wait_until(lambda: worker.process.poll() is not None or not connection.exists(STARTED, READY, INTERMEDIATE),
                   timeout=30)
        assert worker.process.poll() is None, worker.log()  # what RQ's maintenance met did not stop it
        lookup = http("GET", f"{web.url}/runs/lookup?scenarioId=side-door&seed=1", timeout=30)
        assert (lookup.status, lookup.json()["source"]) == (200, "new"), lookup.body
    log = worker.log()  # complete now: the worker has exited
    assert "Successfully completed app.worker.execute_run(" in log  # the run was the worker's to execute
    return log
