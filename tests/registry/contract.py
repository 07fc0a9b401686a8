"""The registry contract: one suite that every backend runs (test_memory.py, test_redis.py).

A backend's test class subclasses ``RegistryContract`` and provides four fixtures:
``ttl_ms``, ``make_registry(max_entries)`` (with that TTL), ``advance(ms)``, which
moves the backend's clock (freezegun for memory, real waiting for Redis), and
``frozen_ms()``, a context in which the service's clock stands still.
"""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.clock import now_ms
from app.models import RunKey
from app.models import RunRecord


def key(name: str = "k1", scenario_id: str = "s") -> RunKey:
    """A run key; ``name`` makes its seed, so different names are different keys."""
    return RunKey(scenario_id, zlib.crc32(name.encode()), "h")


def record(run_key: RunKey, run_id: str) -> RunRecord:
    """A small record; the registry stores it whole and never looks inside its events."""
    return RunRecord.create(
        key=run_key,
        run_id=run_id,
        engine_name="fake",
        engine_version="1",
        events_json='[{"data":{"text":"é\\n"},"type":"done"}]'.encode(),
        event_count=1,
    )


class Builder:
    """A build callable for ``run_key`` that counts its calls and can be held open or made to fail."""

    def __init__(self, run_key: RunKey, gate: threading.Event | None = None, error: Exception | None = None):
        self.run_key, self.gate, self.error = run_key, gate, error
        self.calls = 0
        self.run_ids: list[str] = []
        self.entered = threading.Event()

    def __call__(self, run_id: str) -> RunRecord:
        self.calls += 1
        self.run_ids.append(run_id)
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(timeout=30), "test gate never opened"
        if self.error is not None:
            raise self.error
        return record(self.run_key, run_id)


def create(registry, name: str = "k1", scenario_id: str = "s") -> str:
    """Create the run of ``key(name, scenario_id)``; its runId."""
    run_key = key(name, scenario_id)
    run_id, created = registry.create_once(run_key, Builder(run_key))
    assert created
    return run_id


class RegistryContract:
    @pytest.fixture
    def registry(self, make_registry):
        return make_registry(max_entries=100)

    def test_unknown_key_and_run_id_are_absent(self, registry):
        assert registry.touch(key("nope").digest) is None
        assert registry.get(key("nope").run_id(1_795_694_400_000)) is None

    def test_create_once_builds_stores_and_answers_by_run_id(self, registry, ttl_ms):
        build = Builder(key())
        before = now_ms()
        run_id, created = registry.create_once(key(), build)
        assert created and build.calls == 1 and build.run_ids == [run_id]
        assert run_id.startswith(key().run_id_prefix) and int(run_id.rsplit("_", 1)[1]) >= before
        found = registry.get(run_id)
        assert found.record == record(key(), run_id) and found.hits == 0
        assert abs(found.expires_at - ttl_ms - now_ms()) < 5_000  # created now, in epoch milliseconds

    def test_create_once_of_a_live_key_is_a_hit_without_building(self, registry):
        run_id = create(registry)
        build = Builder(key())
        assert registry.create_once(key(), build) == (run_id, False)
        assert build.calls == 0 and registry.get(run_id).hits == 1

    def test_touch_renews_the_ttl_and_counts_a_hit(self, registry, ttl_ms, advance):
        run_id = create(registry)
        first = registry.get(run_id).expires_at
        advance(ttl_ms * 6 // 10)
        assert registry.touch(key().digest) == run_id
        renewed = registry.get(run_id)
        assert renewed.hits == 1 and renewed.expires_at >= first + ttl_ms * 6 // 10
        advance(ttl_ms * 6 // 10)  # past the first expiry: alive only because the touch renewed it
        assert registry.touch(key().digest) == run_id

    def test_get_neither_renews_nor_counts(self, registry, ttl_ms, advance):
        run_id = create(registry)
        first = registry.get(run_id)
        advance(ttl_ms * 6 // 10)
        again = registry.get(run_id)
        assert (again.expires_at, again.hits) == (first.expires_at, 0)
        advance(ttl_ms * 6 // 10)
        assert registry.get(run_id) is None

    def test_entry_expires_after_its_ttl(self, registry, ttl_ms, advance):
        run_id = create(registry)
        advance(ttl_ms)
        assert registry.get(run_id) is None
        assert registry.touch(key().digest) is None
        later = create(registry)
        assert later != run_id and registry.get(run_id) is None

    def test_failed_build_stores_nothing_and_the_next_call_builds(self, registry):
        with pytest.raises(RuntimeError, match="boom"):
            registry.create_once(key(), Builder(key(), error=RuntimeError("boom")))
        assert registry.touch(key().digest) is None
        build = Builder(key())
        run_id, created = registry.create_once(key(), build)
        assert created and build.calls == 1 and registry.get(run_id) is not None

    def test_least_recently_used_entry_is_evicted_at_the_cap(self, make_registry, advance):
        registry = make_registry(max_entries=3)
        run_ids = {}
        for name in ("a", "b", "c"):
            run_ids[name] = create(registry, name)
            advance(2)  # recency is kept to the millisecond
        registry.touch(key("a").digest)
        run_ids["d"] = create(registry, "d")
        assert registry.get(run_ids["b"]) is None and registry.touch(key("b").digest) is None
        assert all(registry.get(run_ids[name]) is not None for name in ("a", "c", "d"))
        stats = registry.stats(top_scenarios=20)
        assert (stats.total_entries, stats.evictions, stats.expirations) == (3, 1, 0)

    def test_expired_entries_go_without_being_touched(self, registry, ttl_ms, advance):
        for name in ("a", "b", "c"):
            create(registry, name)
        advance(ttl_ms)
        stats = registry.stats(top_scenarios=20)
        assert (stats.total_entries, stats.entries_by_scenario, stats.scenario_count, stats.expirations) == (
            0, {}, 0, 3)

    def test_stats_count_entries_by_scenario(self, registry):
        for name, scenario in (("a", "x"), ("b", "x"), ("c", "y.z-1")):
            create(registry, name, scenario)
        stats = registry.stats(top_scenarios=20)
        assert (stats.total_entries, stats.entries_by_scenario, stats.scenario_count) == (3, {"x": 2, "y.z-1": 1}, 2)
        assert (stats.evictions, stats.expirations) == (0, 0)

    def test_stats_name_only_the_scenarios_with_most_entries(self, registry):
        for name, scenario in (("a", "b-two"), ("b", "b-two"), ("c", "c-one"), ("d", "a-one"), ("e", "d-three"),
                               ("f", "d-three"), ("g", "d-three")):
            create(registry, name, scenario)
        stats = registry.stats(top_scenarios=3)
        # Most entries first; among equals, by name.
        assert list(stats.entries_by_scenario.items()) == [("d-three", 3), ("b-two", 2), ("a-one", 1)]
        assert (stats.total_entries, stats.scenario_count) == (7, 4)
        counts_only = registry.stats(top_scenarios=0)
        assert (counts_only.entries_by_scenario, counts_only.total_entries, counts_only.scenario_count) == ({}, 7, 4)

    def test_run_ids_are_unique_across_keys_and_code_hashes_created_in_one_millisecond(self, registry, frozen_ms):
        """Deploys with another engineCodeHash have another cache key for the same scenario and
        seed: the runId (scenario, seed, millisecond) must still name one run."""
        keys = [RunKey("s", 1, f"deploy-{index}") for index in range(5)]
        with frozen_ms():
            run_ids = [registry.create_once(run_key, Builder(run_key))[0] for run_key in keys]
        assert len(set(run_ids)) == 5
        recorded = [registry.get(run_id).record.engine_code_hash for run_id in run_ids]
        assert recorded == [run_key.engine_code_hash for run_key in keys]

    def test_concurrent_creators_of_one_key_build_once(self, registry):
        gate = threading.Event()
        build = Builder(key(), gate=gate)
        start = threading.Barrier(64)

        def create_one():
            start.wait()
            return registry.create_once(key(), build)

        with ThreadPoolExecutor(max_workers=64) as pool:
            futures = [pool.submit(create_one) for _ in range(64)]
            assert build.entered.wait(timeout=30)
            gate.set()
            results = [future.result(timeout=30) for future in futures]
        assert build.calls == 1
        assert sum(created for _, created in results) == 1
        assert {result_id for result_id, _ in results} == set(build.run_ids)
        assert registry.get(build.run_ids[0]).hits == 63

    def test_a_slow_build_does_not_hold_up_other_keys_and_is_invisible_until_stored(self, registry):
        gate = threading.Event()
        slow = Builder(key("slow"), gate=gate)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(registry.create_once, key("slow"), slow)
            assert slow.entered.wait(timeout=30)
            # While "slow" is still building, other keys are created and read freely...
            fast = create(registry, "fast")
            assert registry.touch(key("fast").digest) == fast and registry.get(fast) is not None
            # ...and nothing of "slow" can be seen before it is stored whole.
            assert registry.touch(key("slow").digest) is None and registry.get(slow.run_ids[0]) is None
            assert not pending.done()
            gate.set()
            assert pending.result(timeout=30) == (slow.run_ids[0], True)
        assert registry.get(slow.run_ids[0]).record == record(key("slow"), slow.run_ids[0])

    def test_callers_waiting_on_a_failed_build_get_its_error(self, registry):
        gate = threading.Event()
        build = Builder(key(), gate=gate, error=RuntimeError("boom"))
        with ThreadPoolExecutor(max_workers=8) as pool:
            leader = pool.submit(registry.create_once, key(), build)
            assert build.entered.wait(timeout=30)
            waiters = [pool.submit(registry.create_once, key(), build) for _ in range(7)]
            gate.set()
            for future in [leader, *waiters]:
                with pytest.raises(RuntimeError, match="boom"):
                    future.result(timeout=30)
        assert registry.touch(key().digest) is None
