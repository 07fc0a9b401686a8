"""The registry contract: one suite that every backend runs (test_memory.py, test_redis.py).

A backend's test class subclasses ``RegistryContract`` and provides five fixtures:
``ttl_ms``, ``make_registry(max_entries, **options)`` (with that TTL), ``advance(ms)``, which
moves the backend's clock (freezegun for memory, real waiting for Redis), ``frozen_ms()``, a
context in which the service's clock stands still, and ``ledger_wait``: a short ledger time and
the ``advance`` that passes it.
"""

from __future__ import annotations

import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.clock import now_ms
from app.models import Divergence
from app.models import LedgerEntry
from app.models import LedgerFigures
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunRecord
from app.models import listing_order
from app.registry.base import RegistryFull

EVENTS = [("start", b'{"seed":1}'), ("token", '{"text":"é\\n"}'.encode()), ("done", b"{}")]


def key(name: str = "k1", scenario_id: str = "s", code_hash: str = "h") -> RunKey:
    """A run key; ``name`` makes its seed, so different names are different keys."""
    return RunKey(scenario_id, zlib.crc32(name.encode()), code_hash)


def identity(run_key: RunKey, run_id: str) -> RunIdentity:
    return RunIdentity.of(run_key, run_id, "fake", "1")


def start(registry, run_key: RunKey | None = None, owner: str = "owner-1"):
    return registry.start(run_key or key(), "fake", "1", owner)


def create(registry, name: str = "k1", scenario_id: str = "s", events=EVENTS) -> str:
    """Start, record and finish the run of ``key(name, scenario_id)``; its runId."""
    return run_to_end(registry, name, scenario_id, events)[0]


def run_to_end(registry, name: str = "k1", scenario_id: str = "s", events=EVENTS):
    """``create``, answering the runId and the ledger check its finish made."""
    run_key = key(name, scenario_id)
    started = start(registry, run_key)
    assert started.started
    assert registry.append(started.run_id, "owner-1", 1, events)
    check = registry.finish(started.run_id, "owner-1", RunRecord.create(identity(run_key, started.run_id), events))
    assert check
    return started.run_id, check


def digest_of(events) -> bytes:
    return RunRecord.create(identity(key(), "run_s_1_1"), events).events_digest


OTHER_EVENTS = [EVENTS[0], ("token", b'{"text":"drift"}'), EVENTS[2]]


def every_page(registry, limit: int) -> list[list[str]]:
    """The runIds of every page of the listing, following ``next`` to the end."""
    pages, before = [], None
    while True:
        page = registry.runs(limit, before)
        pages.append([run.run_id for run in page.runs])
        if page.next is None:
            return pages
        before = page.next


class RegistryContract:
    @pytest.fixture
    def registry(self, make_registry):
        return make_registry(max_entries=100)

    def test_unknown_key_and_run_id_are_absent(self, registry):
        assert registry.touch(key("nope").digest) is None
        assert registry.get(key("nope").run_id(1_795_694_400_000)) is None
        assert registry.open_log(key("nope").run_id(1_795_694_400_000)) is None

    def test_a_run_starts_running_without_expiry_and_its_run_id_is_its_key_and_now(self, registry):
        before = now_ms()
        started = start(registry)
        assert started.started and started.status == "running"
        assert started.run_id.startswith(key().run_id_prefix) and int(started.run_id.rsplit("_", 1)[1]) >= before
        state = registry.get(started.run_id)
        assert (state.status, state.count, state.hits, state.record, state.expires_at) == ("running", 0, 0, None, None)
        assert state.identity == identity(key(), started.run_id)

    def test_starting_a_key_that_has_a_run_is_a_hit(self, registry):
        first = start(registry)
        again = start(registry, owner="owner-2")
        assert (again.run_id, again.status, again.started) == (first.run_id, "running", False)
        assert registry.touch(key().digest).run_id == first.run_id
        assert registry.get(first.run_id).hits == 2

    def test_events_are_appended_in_order_by_the_owner_only(self, registry):
        run_id = start(registry).run_id
        assert registry.append(run_id, "owner-1", 1, EVENTS[:2])
        assert not registry.append(run_id, "intruder", 3, EVENTS[2:])  # not its run
        assert not registry.append(run_id, "owner-1", 2, EVENTS[2:])  # position 2 is taken: no duplicate
        assert not registry.append(run_id, "owner-1", 4, EVENTS[2:])  # no gap either
        assert registry.get(run_id).count == 2
        assert registry.append(run_id, "owner-1", 3, EVENTS[2:])
        assert registry.open_log(run_id).read(0, timeout=1).events == EVENTS

    def test_a_retried_write_that_landed_is_recognised_and_recorded_once(self, registry):
        """A write whose answer was lost (a timeout, on Redis) is retried: the retry must be told
        it landed, or the run is given up though nothing is wrong."""
        run_id = start(registry).run_id
        assert registry.append(run_id, "owner-1", 1, EVENTS[:2])
        assert registry.append(run_id, "owner-1", 1, EVENTS[:2])  # the same batch again
        assert registry.append(run_id, "owner-1", 2, EVENTS[1:2])  # or the tail of it
        assert not registry.append(run_id, "owner-1", 2, EVENTS[2:])  # another event at a taken position
        assert not registry.append(run_id, "owner-1", 2, EVENTS[1:])  # partly past what is there
        assert not registry.append(run_id, "intruder", 1, EVENTS[:2])  # the same events, not its run
        assert registry.get(run_id).count == 2
        assert registry.append(run_id, "owner-1", 3, EVENTS[2:])
        record = RunRecord.create(identity(key(), run_id), EVENTS)
        assert registry.finish(run_id, "owner-1", record)
        assert registry.finish(run_id, "owner-1", record)  # a retried finish
        assert not registry.finish(run_id, "owner-1", RunRecord.create(identity(key(), run_id), EVENTS[:1]))
        assert registry.get(run_id).record == record
        failing = start(registry, key("k2")).run_id
        error = RunError("ENGINE_ERROR", "engine exploded")
        assert registry.fail(failing, "owner-1", error)
        assert registry.fail(failing, "owner-1", error)  # a retried fail
        assert not registry.fail(failing, "owner-1", RunError("ENGINE_ERROR", "another"))
        assert registry.get(failing).error == error

    def test_finishing_makes_the_run_done_and_starts_its_ttl(self, registry, ttl_ms):
        run_id = create(registry)
        state = registry.get(run_id)
        assert (state.status, state.count, state.hits) == ("done", 3, 0)
        assert state.record == RunRecord.create(identity(key(), run_id), EVENTS)
        assert abs(state.expires_at - ttl_ms - now_ms()) < 5_000
        assert registry.touch(key().digest).status == "done"
        assert registry.open_log(run_id) is None  # its events are in its record

    def test_only_the_owner_ends_a_run(self, registry):
        run_id = start(registry).run_id
        record = RunRecord.create(identity(key(), run_id), [])
        assert not registry.finish(run_id, "intruder", record)
        assert not registry.fail(run_id, "intruder", RunError("ENGINE_ERROR", "no"))
        assert registry.get(run_id).status == "running"
        assert registry.finish(run_id, "owner-1", record)
        assert not registry.fail(run_id, "owner-1", RunError("ENGINE_ERROR", "too late"))
        assert registry.get(run_id).status == "done"

    def test_a_failed_run_frees_its_key_and_keeps_its_error_and_events(self, registry):
        run_id = start(registry).run_id
        registry.append(run_id, "owner-1", 1, EVENTS[:1])
        assert registry.fail(run_id, "owner-1", RunError("ENGINE_ERROR", "engine exploded"))
        state = registry.get(run_id)
        assert (state.status, state.count, state.error) == ("failed", 1, RunError("ENGINE_ERROR", "engine exploded"))
        chunk = registry.open_log(run_id).read(0, timeout=1)
        assert (chunk.events, chunk.ending) == (EVENTS[:1], RunError("ENGINE_ERROR", "engine exploded"))
        assert registry.touch(key().digest) is None
        again = start(registry, owner="owner-2")
        assert again.started and again.run_id != run_id
        assert not registry.append(run_id, "owner-1", 2, EVENTS[1:])  # a failed run takes no more events

    def test_readers_of_a_running_run_get_each_event_as_it_comes_and_its_ending(self, registry):
        run_id = start(registry).run_id
        reader = registry.open_log(run_id)
        assert reader.read(0, timeout=0.05).events == []
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(reader.read, 0, 10)
            registry.append(run_id, "owner-1", 1, EVENTS[:1])
            assert waiting.result(timeout=10).events == EVENTS[:1]
            ending = pool.submit(reader.wait_end, 10)
            registry.append(run_id, "owner-1", 2, EVENTS[1:])
            registry.finish(run_id, "owner-1", RunRecord.create(identity(key(), run_id), EVENTS))
            assert ending.result(timeout=10) == "done"
        chunk = reader.read(1, timeout=1)  # the reader finishes from the log it holds
        assert (chunk.events, chunk.ending) == (EVENTS[1:], "done")

    def test_touch_renews_the_ttl_and_counts_a_hit(self, registry, ttl_ms, advance):
        run_id = create(registry)
        first = registry.get(run_id).expires_at
        advance(ttl_ms * 6 // 10)
        assert registry.touch(key().digest).run_id == run_id
        renewed = registry.get(run_id)
        assert renewed.hits == 1 and renewed.expires_at >= first + ttl_ms * 6 // 10
        advance(ttl_ms * 6 // 10)  # past the first expiry: alive only because the touch renewed it
        assert registry.touch(key().digest).run_id == run_id

    def test_get_neither_renews_nor_counts(self, registry, ttl_ms, advance):
        run_id = create(registry)
        first = registry.get(run_id)
        advance(ttl_ms * 6 // 10)
        again = registry.get(run_id)
        assert (again.expires_at, again.hits) == (first.expires_at, 0)
        advance(ttl_ms * 6 // 10)
        assert registry.get(run_id) is None

    def test_a_running_run_never_expires(self, registry, ttl_ms, advance):
        run_id = start(registry).run_id
        advance(ttl_ms * 12 // 10)
        assert registry.get(run_id).status == "running"
        assert registry.touch(key().digest).run_id == run_id

    def test_entry_expires_after_its_ttl(self, registry, ttl_ms, advance):
        run_id = create(registry)
        advance(ttl_ms)
        assert registry.get(run_id) is None
        assert registry.touch(key().digest) is None
        later = create(registry)
        assert later != run_id and registry.get(run_id) is None

    def test_least_recently_used_done_entry_is_evicted_at_the_cap(self, make_registry, advance):
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

    def test_running_runs_are_never_evicted_and_a_registry_full_of_them_refuses_more(self, make_registry):
        registry = make_registry(max_entries=2)
        done = create(registry, "done")
        running = start(registry, key("running")).run_id
        third = start(registry, key("third")).run_id  # evicts the done run, not the running one
        assert registry.get(done) is None and registry.get(running).status == "running"
        with pytest.raises(RegistryFull):
            start(registry, key("fourth"))
        assert registry.get(third).status == "running"
        assert registry.stats(top_scenarios=0).running == 2

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
        start(registry, key("d", "y.z-1"))
        stats = registry.stats(top_scenarios=20)
        assert (stats.total_entries, stats.entries_by_scenario, stats.scenario_count) == (4, {"x": 2, "y.z-1": 2}, 2)
        assert (stats.evictions, stats.expirations, stats.running, stats.misses) == (0, 0, 1, 4)

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

    def test_run_ids_are_unique_across_keys_and_code_hashes_started_in_one_millisecond(self, registry, frozen_ms):
        """Deploys with another engineCodeHash have another cache key for the same scenario and
        seed: the runId (scenario, seed, millisecond) must still name one run."""
        keys = [key("k1", code_hash=f"deploy-{index}") for index in range(5)]
        with frozen_ms():
            run_ids = [start(registry, run_key).run_id for run_key in keys]
        assert len(set(run_ids)) == 5
        recorded = [registry.get(run_id).identity.engine_code_hash for run_id in run_ids]
        assert recorded == [run_key.engine_code_hash for run_key in keys]

    def test_concurrent_starts_of_one_key_start_one_run(self, registry):
        barrier = threading.Barrier(32)

        def start_one(index):
            barrier.wait()
            return start(registry, owner=f"owner-{index}")

        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(start_one, range(32)))
        assert sum(result.started for result in results) == 1
        assert len({result.run_id for result in results}) == 1
        assert registry.get(results[0].run_id).hits == 31

    # The determinism ledger.

    def test_a_keys_first_done_run_is_its_reference_and_a_re_run_after_expiry_reproduces_it(
            self, registry, ttl_ms, advance):
        first, made = run_to_end(registry)
        assert made.result == "reference" and made.entry == LedgerEntry(first, digest_of(EVENTS), 0, 0)
        advance(ttl_ms)
        assert registry.get(first) is None and registry.touch(key().digest) is None
        second, check = run_to_end(registry)
        assert second != first
        assert check.result == "reproduced" and check.entry == LedgerEntry(first, digest_of(EVENTS), 1, 0)
        assert registry.ledger(key().digest) == check.entry
        assert registry.ledger_figures(20) == LedgerFigures(keys=1, reproduced=1, diverged=0)

    def test_a_diverging_re_run_after_eviction_is_listed_and_never_replaces_the_reference(self, make_registry):
        registry = make_registry(max_entries=1)
        first = create(registry, "k1")
        create(registry, "k2")  # evicts k1's run; its ledger entry stays
        assert registry.get(first) is None and registry.ledger(key("k1").digest).reference_run_id == first
        diverging, check = run_to_end(registry, "k1", events=OTHER_EVENTS)
        assert check.result == "diverged" and check.entry == LedgerEntry(first, digest_of(EVENTS), 1, 1)
        create(registry, "k2")  # a re-run of k2 (reproduced), evicting the diverging run
        _, again = run_to_end(registry, "k1")
        assert again.result == "reproduced" and again.entry == LedgerEntry(first, digest_of(EVENTS), 2, 1)
        assert again.entry.status == "diverged"  # once a key diverged, it says so
        figures = registry.ledger_figures(20)
        assert (figures.keys, figures.reproduced, figures.diverged, figures.checks) == (2, 2, 1, 3)  # k2's re-run too
        [divergence] = figures.divergences
        assert divergence == Divergence(
            key("k1").digest, "h", first, digest_of(EVENTS).hex(), diverging, digest_of(OTHER_EVENTS).hex(),
            divergence.at)
        assert (divergence.scenario_id, divergence.seed) == ("s", key("k1").seed) and divergence.at > 0
        assert registry.ledger_figures(0).divergences == ()

    def test_a_verify_is_a_check_and_makes_the_verified_run_the_reference_of_a_key_without_one(self, make_registry):
        registry = make_registry(max_entries=100, ledger_keys=1)
        first = create(registry, "k1")
        record = registry.get(first).record
        assert registry.check_reproduction(record, digest_of(EVENTS)).result == "reproduced"
        diverged = registry.check_reproduction(record, digest_of(OTHER_EVENTS))
        assert diverged.result == "diverged" and diverged.entry == LedgerEntry(first, digest_of(EVENTS), 2, 1)
        create(registry, "k2")  # the ledger holds one key, and k1 diverged: k2's is not kept
        assert registry.ledger(key("k2").digest) is None
        again = registry.check_reproduction(record, digest_of(OTHER_EVENTS))
        assert again.result == "diverged" and again.entry == LedgerEntry(first, digest_of(EVENTS), 3, 2)

    def test_a_key_not_checked_for_its_ledger_time_is_forgotten_and_starts_afresh(self, make_registry, ledger_wait):
        ledger_ms, advance = ledger_wait
        registry = make_registry(max_entries=100, ledger_ms=ledger_ms)
        first = create(registry, "k1")
        registry.discard(first)
        advance(ledger_ms)
        assert registry.ledger(key("k1").digest) is None
        assert registry.ledger_figures(0).keys == 0
        second, check = run_to_end(registry, "k1", events=OTHER_EVENTS)
        assert check.result == "reference" and check.entry == LedgerEntry(second, digest_of(OTHER_EVENTS), 0, 0)

    def test_the_ledger_holds_at_most_its_cap_forgetting_the_least_recently_checked(self, make_registry):
        registry = make_registry(max_entries=100, ledger_keys=3)
        runs = [create(registry, f"k{index}") for index in range(3)]
        registry.check_reproduction(registry.get(runs[0]).record, digest_of(EVENTS))  # k0 checked: now the newest
        create(registry, "k3")
        assert registry.ledger_figures(0).keys == 3
        assert registry.ledger(key("k1").digest) is None  # the least recently checked
        assert all(registry.ledger(key(name).digest) for name in ("k0", "k2", "k3"))

    def test_a_flood_of_new_keys_forgets_keys_that_never_diverged_before_one_that_did(self, make_registry):
        """A caller with ``run`` making RUN_REGISTRY_LEDGER_MAX_KEYS new keys must not erase a divergence."""
        registry = make_registry(max_entries=100, ledger_keys=4)
        drifting = create(registry, "drifting")
        registry.check_reproduction(registry.get(drifting).record, digest_of(OTHER_EVENTS))  # it diverged
        for index in range(12):  # the flood: three times the ledger's keys, each newer than the divergence
            create(registry, f"flood-{index}")
        entry = registry.ledger(key("drifting").digest)
        assert entry == LedgerEntry(drifting, digest_of(EVENTS), 1, 1) and entry.status == "diverged"
        assert registry.ledger_figures(0).keys == 4
        kept = [index for index in range(12) if registry.ledger(key(f"flood-{index}").digest)]
        assert kept == [9, 10, 11]  # of the rest, the least recently checked went first

    def test_a_retried_finish_answers_its_check_again_without_counting_it_twice(self, registry, ttl_ms, advance):
        create(registry)
        advance(ttl_ms)
        run_key = key()
        started = start(registry, run_key)
        record = RunRecord.create(identity(run_key, started.run_id), OTHER_EVENTS)
        registry.append(started.run_id, "owner-1", 1, OTHER_EVENTS)
        first = registry.finish(started.run_id, "owner-1", record)
        assert registry.finish(started.run_id, "owner-1", record) == first
        assert first.result == "diverged" and registry.ledger_figures(0).diverged == 1

    def test_concurrent_checks_of_a_key_without_a_reference_agree_on_one(self, make_registry):
        registry = make_registry(max_entries=100)
        records = [RunRecord.create(identity(key(), f"run_s_1_{index + 1}"), [*EVENTS, ("done", b'{"n":%d}' % index)])
                   for index in range(16)]
        barrier = threading.Barrier(16)

        def check(record):
            barrier.wait()
            return registry.check_reproduction(record, record.events_digest)

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = [outcome.result for outcome in pool.map(check, records)]
        assert sorted(results) == ["diverged"] * 15 + ["reproduced"]
        reference = registry.ledger(key().digest)
        assert reference.checks == 16 and reference.divergences == 15
        assert reference.reference_run_id == records[results.index("reproduced")].run_id

    def test_a_damaged_done_run_can_be_discarded_so_its_key_runs_anew(self, registry):
        run_id = create(registry)
        registry.discard(run_id)
        assert registry.get(run_id) is None and registry.touch(key().digest) is None
        assert start(registry).started

    def test_runs_are_listed_newest_first_a_page_at_a_time_with_their_status_and_determinism(self, registry):
        done = [create(registry, f"done-{index}") for index in range(5)]
        failed = start(registry, key("failed")).run_id
        assert registry.fail(failed, "owner-1", RunError("ENGINE_ERROR", "broke"))
        running = start(registry, key("running")).run_id
        newest_first = sorted([*done, failed, running], key=listing_order, reverse=True)
        pages = every_page(registry, 3)
        assert [run_id for page in pages for run_id in page] == newest_first
        assert [len(page) for page in pages] == [3, 3, 1]
        listed = {run.run_id: run for run in registry.runs(100, None).runs}
        assert {run_id: run.status for run_id, run in listed.items()} == {
            **{run_id: "done" for run_id in done}, failed: "failed", running: "running"}
        assert listed[done[0]].determinism == LedgerEntry(done[0], digest_of(EVENTS), 0, 0)
        assert listed[failed].determinism is None and listed[running].determinism is None
        assert (listed[running].scenario_id, listed[running].seed) == ("s", key("running").seed)

    def test_runs_of_one_millisecond_are_each_listed_once_across_pages(self, registry, frozen_ms):
        # On Redis these runs share a millisecond (the memory registry never repeats one).
        with frozen_ms():
            run_ids = [start(registry, key(f"same-ms-{index}")).run_id for index in range(7)]
            pages = every_page(registry, 2)
        assert sorted(run_id for page in pages for run_id in page) == sorted(run_ids)
        assert [len(page) for page in pages] == [2, 2, 2, 1]

    def test_runs_gone_are_not_listed_and_a_listing_passes_a_bounded_number_of_them(
            self, make_registry, advance, ttl_ms):
        from app.registry.base import LISTING_SCAN

        registry = make_registry(max_entries=LISTING_SCAN * 3)
        gone = [create(registry, f"gone-{index}") for index in range(LISTING_SCAN + 5)]
        discarded = create(registry, "discarded")
        registry.discard(discarded)
        advance(ttl_ms)
        live = [start(registry, key(f"live-{index}")).run_id for index in range(2)]
        first = registry.runs(10, None)
        assert sorted(run.run_id for run in first.runs) == sorted(live)
        pages = every_page(registry, 10)
        assert sorted(run_id for page in pages for run_id in page) == sorted(live)
        assert not set(gone) & {run_id for page in pages for run_id in page}
        assert registry.runs(10, None).next is None  # the gone ones met are out of the index
