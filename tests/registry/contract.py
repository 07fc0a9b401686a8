"""The registry contract: one suite that every backend runs (test_memory.py, test_redis.py).

A backend's test class subclasses ``RegistryContract`` and provides three fixtures:
``ttl_ms``, ``make_registry(max_entries)`` (with that TTL) and ``advance(ms)``, which
moves the backend's clock: freezegun for memory, real waiting for Redis.
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.clock import now_ms
from app.models import RunKey
from app.models import RunRecord


def record(cache_key: str = "k1", scenario_id: str = "s", created_at: int = 1_795_694_400_000) -> RunRecord:
    """A small record; the registry stores it whole and never looks inside its events."""
    return dataclasses.replace(
        RunRecord.create(
            key=RunKey(scenario_id, zlib.crc32(cache_key.encode()), "h"),
            engine_name="fake",
            engine_version="1",
            created_at=created_at,
            events_json='[{"data":{"text":"é\\n"},"type":"done"}]'.encode(),
            event_count=1,
        ),
        cache_key=cache_key,  # the registry takes the key it is given; short ones read better here
    )


def run_id(cache_key: str = "k1", **kwargs: Any) -> str:
    """The runId of ``record(cache_key, **kwargs)``."""
    return record(cache_key, **kwargs).run_id


class Builder:
    """A build callable that counts its calls and can be held open or made to fail."""

    def __init__(self, result: RunRecord, gate: threading.Event | None = None, error: Exception | None = None):
        self.result, self.gate, self.error = result, gate, error
        self.calls = 0
        self.entered = threading.Event()

    def __call__(self) -> RunRecord:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        if self.error is not None:
            raise self.error
        return self.result


class RegistryContract:
    @pytest.fixture
    def registry(self, make_registry):
        return make_registry(max_entries=100)

    def test_unknown_key_and_run_id_are_absent(self, registry):
        assert registry.touch("nope") is None
        assert registry.get(run_id("nope")) is None

    def test_create_once_builds_stores_and_answers_by_run_id(self, registry, ttl_ms):
        build = Builder(record())
        assert registry.create_once("k1", build) == (run_id(), True)
        assert build.calls == 1
        found = registry.get(run_id())
        assert found.record == record() and found.hits == 0
        assert abs(found.expires_at - ttl_ms - now_ms()) < 5_000  # created now, in epoch milliseconds

    def test_create_once_of_a_live_key_is_a_hit_without_building(self, registry):
        registry.create_once("k1", Builder(record()))
        build = Builder(record(created_at=2))
        assert registry.create_once("k1", build) == (run_id(), False)
        assert build.calls == 0 and registry.get(run_id()).hits == 1

    def test_touch_renews_the_ttl_and_counts_a_hit(self, registry, ttl_ms, advance):
        registry.create_once("k1", Builder(record()))
        first = registry.get(run_id()).expires_at
        advance(ttl_ms * 6 // 10)
        assert registry.touch("k1") == run_id()
        renewed = registry.get(run_id())
        assert renewed.hits == 1 and renewed.expires_at >= first + ttl_ms * 6 // 10
        advance(ttl_ms * 6 // 10)  # past the first expiry: alive only because the touch renewed it
        assert registry.touch("k1") == run_id()

    def test_get_neither_renews_nor_counts(self, registry, ttl_ms, advance):
        registry.create_once("k1", Builder(record()))
        first = registry.get(run_id())
        advance(ttl_ms * 6 // 10)
        again = registry.get(run_id())
        assert (again.expires_at, again.hits) == (first.expires_at, 0)
        advance(ttl_ms * 6 // 10)
        assert registry.get(run_id()) is None

    def test_entry_expires_after_its_ttl(self, registry, ttl_ms, advance):
        registry.create_once("k1", Builder(record()))
        advance(ttl_ms)
        assert registry.get(run_id()) is None
        assert registry.touch("k1") is None
        assert registry.create_once("k1", Builder(record(created_at=3))) == (run_id(created_at=3), True)
        assert registry.get(run_id()) is None

    def test_failed_build_stores_nothing_and_the_next_call_builds(self, registry):
        with pytest.raises(RuntimeError, match="boom"):
            registry.create_once("k1", Builder(record(), error=RuntimeError("boom")))
        assert registry.touch("k1") is None and registry.get(run_id()) is None
        build = Builder(record())
        assert registry.create_once("k1", build) == (run_id(), True) and build.calls == 1

    def test_least_recently_used_entry_is_evicted_at_the_cap(self, make_registry):
        registry = make_registry(max_entries=3)
        for key in ("a", "b", "c"):
            registry.create_once(key, Builder(record(key)))
        registry.touch("a")
        registry.create_once("d", Builder(record("d")))
        assert registry.get(run_id("b")) is None and registry.touch("b") is None
        assert all(registry.get(run_id(key)) is not None for key in ("a", "c", "d"))
        stats = registry.stats()
        assert (stats.total_entries, stats.evictions, stats.expirations) == (3, 1, 0)

    def test_expired_entries_go_without_being_touched(self, registry, ttl_ms, advance):
        for key in ("a", "b", "c"):
            registry.create_once(key, Builder(record(key)))
        advance(ttl_ms)
        stats = registry.stats()
        assert (stats.total_entries, stats.entries_by_scenario, stats.expirations) == (0, {}, 3)

    def test_stats_count_entries_by_scenario(self, registry):
        for key, scenario in (("a", "x"), ("b", "x"), ("c", "y.z-1")):
            registry.create_once(key, Builder(record(key, scenario)))
        stats = registry.stats()
        assert (stats.total_entries, stats.entries_by_scenario) == (3, {"x": 2, "y.z-1": 1})
        assert (stats.evictions, stats.expirations) == (0, 0)

    def test_concurrent_creators_of_one_key_build_once(self, registry):
        gate = threading.Event()
        build = Builder(record(), gate=gate)
        start = threading.Barrier(64)

        def create():
            start.wait()
            return registry.create_once("k1", build)

        with ThreadPoolExecutor(max_workers=64) as pool:
            futures = [pool.submit(create) for _ in range(64)]
            assert build.entered.wait(timeout=30)
            gate.set()
            results = [future.result(timeout=30) for future in futures]
        assert build.calls == 1
        assert sum(created for _, created in results) == 1
        assert {result_id for result_id, _ in results} == {run_id()}
        assert registry.get(run_id()).hits == 63

    def test_a_slow_build_does_not_hold_up_other_keys_and_is_invisible_until_stored(self, registry):
        gate = threading.Event()
        slow = Builder(record("slow"), gate=gate)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(registry.create_once, "slow", slow)
            assert slow.entered.wait(timeout=30)
            # While "slow" is still building, other keys are created and read freely...
            assert registry.create_once("fast", Builder(record("fast"))) == (run_id("fast"), True)
            assert registry.touch("fast") == run_id("fast") and registry.get(run_id("fast")) is not None
            # ...and nothing of "slow" can be seen before it is stored whole.
            assert registry.touch("slow") is None and registry.get(run_id("slow")) is None
            assert not pending.done()
            gate.set()
            assert pending.result(timeout=30) == (run_id("slow"), True)
        assert registry.get(run_id("slow")).record == record("slow")

    def test_callers_waiting_on_a_failed_build_get_its_error(self, registry):
        gate = threading.Event()
        build = Builder(record(), gate=gate, error=RuntimeError("boom"))
        with ThreadPoolExecutor(max_workers=8) as pool:
            leader = pool.submit(registry.create_once, "k1", build)
            assert build.entered.wait(timeout=30)
            waiters = [pool.submit(registry.create_once, "k1", build) for _ in range(7)]
            gate.set()
            for future in [leader, *waiters]:
                with pytest.raises(RuntimeError, match="boom"):
                    future.result(timeout=30)
        assert registry.touch("k1") is None
