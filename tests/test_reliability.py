"""Short versions of `make soak`: load, floods, expiry churn, races and faults, with nothing lost."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import scenarios
from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server


def test_mixed_load_on_gunicorn(tmp_path):
    outcome = scenarios.mixed_load(tmp_path, seconds=4)
    assert outcome.errors == [], outcome


def test_slow_bodies_stalled_readers_and_costly_heads_take_no_service_away(tmp_path):
    outcome = scenarios.hostile_clients(tmp_path, seconds=3, slow_bodies=200, readers=20, costly_heads=20)
    assert outcome.errors == [], outcome


def test_a_flood_of_keys_keeps_the_determinism_ledger_at_its_cap_on_both_backends(tmp_path):
    outcome = scenarios.ledger_flood(tmp_path, keys=8_000, max_keys=500)
    assert outcome.errors == [], outcome.errors


def test_flood_of_distinct_keys_keeps_the_cap_and_the_hot_keys():
    outcome = scenarios.flood(keys=8_000, max_entries=500)
    assert outcome.errors == [], outcome


def test_expiry_churn_answers_consistently_and_leaves_nothing_behind():
    outcome = scenarios.expiry_churn(seconds=2)
    assert outcome.errors == [], outcome


def test_threads_racing_on_expiring_evicted_keys_never_share_or_double_a_run():
    outcome = scenarios.racing_threads(seconds=2)
    assert outcome.errors == [], outcome


def slow_engine_env(tmp_path, **extra):
    return {"RUN_REGISTRY_ENGINE": "harness.fakes:FileCountingEngine",
            "RUN_REGISTRY_TEST_EXECUTIONS": str(tmp_path / "executions"),
            "RUN_REGISTRY_TEST_ENGINE_DELAY_S": "1.0", **extra}


def test_sigterm_lets_in_flight_requests_finish(tmp_path):
    server = Gunicorn(tmp_path / "gunicorn.log", env=slow_engine_env(tmp_path)).start()
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            in_flight = [pool.submit(http, "GET", f"{server.url}/runs/lookup?scenarioId=slow&seed={seed}", None, None,
                                     30) for seed in range(3)]
            time.sleep(0.4)  # the engine runs take a second: all three are in flight
            server.process.send_signal(signal.SIGTERM)
            replies = [future.result(timeout=30) for future in in_flight]
        assert [reply.status for reply in replies] == [200, 200, 200]
        assert {reply.json()["source"] for reply in replies} == {"new"}
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    with pytest.raises(OSError):
        http("GET", f"{server.url}/healthz", timeout=2)


def test_a_killed_worker_is_replaced_and_on_redis_nothing_is_lost(tmp_path, redis_url):
    env = {"RUN_REGISTRY_URL": redis_url, "WEB_CONCURRENCY": "2"}
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        keys = [(f"kept-{index}", index) for index in range(6)]
        before = scenarios.lookup_answers(server.url, keys)
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        workers = server.worker_pids()
        while time.monotonic() < deadline and (len(workers) < 2 or victim in workers):
            time.sleep(0.05)
            workers = server.worker_pids()  # one look per check: two looks may see two moments
        assert len(workers) == 2 and victim not in workers
        while time.monotonic() < deadline and server.ready_workers() < 3:  # the replacement serves
            time.sleep(0.05)
        stop, failures = threading.Event(), []

        def load():
            while not stop.is_set():
                reply = http("GET", f"{server.url}/runs/lookup?scenarioId=kept-0&seed=0")
                if reply.status != 200:
                    failures.append(reply.status)

        loader = threading.Thread(target=load)
        loader.start()
        after = scenarios.lookup_answers(server.url, keys)
        stop.set()
        loader.join()
        log = server.log()
    assert after == before  # every run survived the worker's death
    assert failures == []
    assert log.count("Booting worker") == 3
