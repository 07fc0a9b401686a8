"""Several gunicorn workers sharing one registry on a real redis-server."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.servers import Gunicorn
from harness.servers import RedisServer
from harness.servers import free_port
from harness.servers import http
from harness.servers import metric

pytestmark = pytest.mark.server


def counting_env(redis_url, executions, **extra):
    return {
        "RUN_REGISTRY_URL": redis_url,
        "RUN_REGISTRY_ENGINE": "harness.fakes:FileCountingEngine",
        "RUN_REGISTRY_TEST_EXECUTIONS": str(executions),
        "RUN_REGISTRY_REDIS_TIMEOUT_MS": "300",
        **extra,
    }


def test_four_workers_run_one_new_key_once_for_100_concurrent_lookups(redis_url, tmp_path):
    executions = tmp_path / "executions"
    env = counting_env(redis_url, executions, WEB_CONCURRENCY="4",
                       RUN_REGISTRY_TEST_ENGINE_DELAY_S="0.5")
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        start = threading.Barrier(100)

        def lookup(_):
            start.wait()
            return http("GET", f"{server.url}/runs/lookup?scenarioId=hot&seed=7", timeout=30)

        with ThreadPoolExecutor(max_workers=100) as pool:
            replies = list(pool.map(lookup, range(100)))
        # Whichever worker answers a scrape, the figures are those of all four.
        scrapes = [http("GET", f"{server.url}/metrics").body.decode() for _ in range(8)]
        stats = http("GET", f"{server.url}/registry/stats").json()
        log = server.log()
    assert [reply.status for reply in replies] == [200] * 100
    bodies = [reply.json() for reply in replies]
    assert [body["source"] for body in bodies].count("new") == 1
    assert len({body["runId"] for body in bodies}) == 1
    assert executions.read_text().count("\n") == 1
    assert log.count("Booting worker") == 4
    for text in scrapes:
        assert metric(text, 'run_registry_lookups_total{source="new"}') == 1
        assert metric(text, 'run_registry_lookups_total{source="cache"}') == 99
        assert metric(text, "run_registry_engine_executions_total") == 1
        assert metric(text, "run_registry_entries") == 1
    assert (stats["hits"], stats["misses"], stats["hit_ratio"], stats["engine_executions"]) == (99, 1, 0.99, 1)
    assert stats["backend"] == "redis" and stats["entries_by_scenario"] == {"hot": 1}
    assert "4 worker processes (gevent, 2000 connections each), sharing the registry at redis://127.0.0.1:" in log


def test_entries_survive_a_restart_of_the_service(redis_url, tmp_path):
    env = counting_env(redis_url, tmp_path / "executions", WEB_CONCURRENCY="2")
    with Gunicorn(tmp_path / "first.log", env=env) as server:
        first = http("GET", f"{server.url}/runs/lookup?scenarioId=kept&seed=1").json()
    with Gunicorn(tmp_path / "second.log", env=env) as server:
        again = http("GET", f"{server.url}/runs/lookup?scenarioId=kept&seed=1").json()
        events = http("GET", f"{server.url}/runs/{first['runId']}/events")
    assert first["source"] == "new" and again == {"runId": first["runId"], "source": "cache"}
    assert events.status == 200 and events.json()["count"] == 5


def test_redis_killed_mid_load_gives_prompt_503s_then_recovers_by_itself(tmp_path):
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    original, restarted = RedisServer(redis_dir, port=port), RedisServer(redis_dir, port=port)
    env = counting_env(original.url, tmp_path / "executions", WEB_CONCURRENCY="2")
    replies, stop = [], threading.Event()
    try:
        original.start()
        with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:

            def load():
                seed = 0
                while not stop.is_set():
                    seed += 1
                    started = time.monotonic()
                    reply = http("GET", f"{server.url}/runs/lookup?scenarioId=load&seed={seed % 20}", timeout=30)
                    replies.append((time.monotonic(), reply.status, reply.json(), time.monotonic() - started))

            workers = [threading.Thread(target=load) for _ in range(4)]
            for worker in workers:
                worker.start()
            time.sleep(0.5)
            killed_at = time.monotonic()
            original.stop(signal.SIGKILL)
            time.sleep(1.0)
            restarted_at = time.monotonic()
            restarted.start()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not any(t > restarted_at and s == 200 for t, s, _, _ in replies):
                time.sleep(0.1)
            time.sleep(0.3)
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
    finally:
        stop.set()
        original.stop(signal.SIGKILL)
        restarted.stop()
    statuses = {status for _, status, _, _ in replies}
    assert statuses <= {200, 503}, statuses
    outage = [(t, body, took) for t, status, body, took in replies if status == 503]
    assert outage, "no request saw the outage"
    assert {body["type"] for _, body, _ in outage} == {"UNAVAILABLE"}
    down_message = "The run registry is unavailable; try again shortly"
    down = [took for _, body, took in outage if body["message"] == down_message]
    assert down and max(down) < 3  # bounded by the 300 ms socket timeouts, not a hang
    # A lookup waiting on a run when Redis died follows it through the outage (a short one loses
    # no watcher), and once Redis is back without the run, is told to look it up again. A loaded
    # machine leaves runs in flight at the kill. No other 503.
    vanished_message = "The run is no longer in the registry; look it up again"
    vanished = [t for t, body, _ in outage if body["message"] == vanished_message]
    assert len(down) + len(vanished) == len(outage), outage
    assert all(t > restarted_at for t in vanished)
    assert any(t > restarted_at and status == 200 for t, status, _, _ in replies), "never recovered"
    assert any(killed_at > t and status == 200 for t, status, _, _ in replies)
