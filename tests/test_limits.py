"""Limits against hostile clients: new runs a client may start, engine capacity, shared verifications."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from app import create_app
from harness.fakes import FakeEngine
from harness.servers import wait_until
from tests.conftest import test_settings

pytestmark = pytest.mark.usefixtures("frozen")


def limited_client(per_minute, engine=None, **settings):
    return create_app(test_settings(new_runs_per_minute=per_minute, **settings), engine=engine or FakeEngine())


def lookup(client, scenario, seed=1, address="127.0.0.1", headers=None):
    return client.get(f"/runs/lookup?scenarioId={scenario}&seed={seed}", environ_base={"REMOTE_ADDR": address},
                      headers=headers or {})


def test_one_client_cannot_evict_everyone_elses_runs():
    app = limited_client(10, max_entries=20)
    client = app.test_client()
    theirs = [lookup(client, "theirs", seed, address="192.0.2.1").get_json()["runId"] for seed in range(10)]
    answers = [lookup(client, "flood", seed, address="192.0.2.66") for seed in range(25)]
    assert [answer.status_code for answer in answers] == [200] * 10 + [429] * 15
    assert all(client.get(f"/runs/{run_id}").status_code == 200 for run_id in theirs)


def test_past_the_limit_is_429_with_retry_after_and_nothing_starts(frozen):
    engine = FakeEngine()
    client = limited_client(3, engine).test_client()
    for seed in range(3):
        assert lookup(client, "s", seed).status_code == 200
    refused = lookup(client, "s", 99)
    assert refused.status_code == 429
    assert refused.get_json() == {
        "type": "RATE_LIMITED",
        "message": "This client may start 3 engine executions a minute; retry in a moment or use cached runs",
    }
    assert refused.headers["Retry-After"] == "61"  # the first run leaves the window just after a minute
    assert engine.calls == 3
    frozen.tick(timedelta(seconds=45))
    assert lookup(client, "s", 99).headers["Retry-After"] == "16"
    frozen.tick(timedelta(seconds=16))
    assert lookup(client, "s", 99).status_code == 200  # the window moved on
    assert engine.calls == 4


def test_hits_and_reads_never_count():
    client = limited_client(2).test_client()
    run_id = lookup(client, "s", 1).get_json()["runId"]
    for _ in range(50):
        assert lookup(client, "s", 1).get_json()["source"] == "cache"
        for path in ("", "/events", "/export.csv", "/snapshot"):
            assert client.get(f"/runs/{run_id}{path}").status_code == 200
    assert lookup(client, "s", 2).status_code == 200
    assert lookup(client, "s", 3).status_code == 429


def test_clients_have_a_limit_each():
    client = limited_client(1).test_client()
    assert lookup(client, "s", 1, address="192.0.2.1").status_code == 200
    assert lookup(client, "s", 2, address="192.0.2.1").status_code == 429
    assert lookup(client, "s", 2, address="192.0.2.2").status_code == 200


def test_zero_turns_the_limit_off():
    client = limited_client(0).test_client()
    assert {lookup(client, "s", seed).status_code for seed in range(100)} == {200}


def test_verify_counts_and_compare_counts_each_side_that_starts_a_run():
    engine = FakeEngine()
    client = limited_client(4, engine).test_client()
    run_id = lookup(client, "s", 1).get_json()["runId"]  # 1
    assert client.post(f"/runs/{run_id}/verify").status_code == 200  # 2
    body = {"left": {"scenarioId": "s", "seed": 1}, "right": {"scenarioId": "s", "seed": 2}}
    assert client.post("/compare", json=body).status_code == 200  # 3: the left side was cached
    body = {"left": {"scenarioId": "s", "seed": 3}, "right": {"scenarioId": "s", "seed": 4}}
    assert client.post("/compare", json=body).status_code == 429  # 4 and 5: both sides admitted, or neither
    assert engine.calls == 3  # neither side started
    assert client.post(f"/runs/{run_id}/verify").status_code == 200  # 4
    assert client.post(f"/runs/{run_id}/verify").status_code == 429
    assert engine.calls == 4


@pytest.mark.parametrize(("trusted", "limited_on"), [(0, "the proxy"), (1, "each client")])
def test_behind_a_proxy_the_client_is_the_forwarded_address_only_when_trusted(trusted, limited_on):
    client = limited_client(1, trusted_proxies=trusted).test_client()
    first = lookup(client, "s", 1, headers={"X-Forwarded-For": "203.0.113.1"})
    second = lookup(client, "s", 2, headers={"X-Forwarded-For": "203.0.113.2"})
    assert first.status_code == 200
    # Untrusted, every client is the proxy's address: they share one budget.
    assert second.status_code == (429 if limited_on == "the proxy" else 200)


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", True), ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
     ("127.0.0.1", "127.0.0.2", True), ("::1", "127.0.0.9", True), ("192.0.2.1", "::ffff:192.0.2.1", True),
     ("192.0.2.1", "192.0.2.2", False)],
    ids=["one-ipv6-64", "two-ipv6-64s", "loopback-8", "loopback-both", "ipv4-mapped", "two-ipv4"],
)
def test_a_client_is_its_ipv4_address_or_its_ipv6_64_and_all_of_loopback_is_one(first, second, shared):
    client = limited_client(1).test_client()
    assert lookup(client, "s", 1, address=first).status_code == 200
    assert lookup(client, "s", 2, address=second).status_code == (429 if shared else 200)


def test_a_waiter_on_another_clients_refused_run_tries_on_its_own_limit():
    """Two clients ask for one new key at once; the one that leads is over its limit."""
    gate = threading.Event()
    engine = FakeEngine(gates={"other": gate})
    client = limited_client(1, engine).test_client()
    with ThreadPoolExecutor(max_workers=1) as pool:
        spent = pool.submit(lookup, client, "other", 1, "192.0.2.1")  # uses 192.0.2.1's one run
        assert engine.started.wait(timeout=10)
        gate.set()
        assert spent.result(timeout=10).status_code == 200
    assert lookup(client, "shared", 1, address="192.0.2.1").status_code == 429
    assert lookup(client, "shared", 1, address="192.0.2.2").get_json()["source"] == "new"


def test_a_full_engine_answers_503_at_once_and_frees_up():
    gate = threading.Event()
    engine = FakeEngine(gates={"slow": gate})
    client = limited_client(0, engine, engine_threads=1, engine_queue=1).test_client()
    service = client.application.extensions["operations_service"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        running = pool.submit(lookup, client, "slow", 1)
        assert engine.started.wait(timeout=10)
        queued = pool.submit(lookup, client, "slow", 2)
        wait_until(lambda: service.engine_slots_in_use() == 2)  # one running, one in the queue of one
        refused = lookup(client, "other", 1)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.get_json()["type"] == "UNAVAILABLE"
        assert lookup(client, "slow", 3).status_code == 503
        gate.set()
        assert running.result(timeout=10).status_code == 200 and queued.result(timeout=10).status_code == 200
    assert lookup(client, "other", 1).status_code == 200
    assert engine.calls == 3


def test_concurrent_verifies_of_one_run_share_one_execution():
    gate = threading.Event()
    engine = FakeEngine(gates={"s": gate})
    client = limited_client(0, engine).test_client()
    gate.set()
    run_id = lookup(client, "s", 1).get_json()["runId"]
    gate.clear()
    engine.started.clear()
    service = client.application.extensions["verification_service"]
    with ThreadPoolExecutor(max_workers=10) as pool:
        verifies = [pool.submit(client.post, f"/runs/{run_id}/verify") for _ in range(10)]
        wait_until(lambda: service.verification_callers(run_id) == 10)  # all ten on the one execution
        gate.set()
        answers = [future.result(timeout=10) for future in verifies]
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.get_data() for answer in answers}) == 1
    assert engine.calls == 2  # the run, and one verification for all ten
