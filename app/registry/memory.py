"""The embedded registry: dicts behind a lock, with lazy expiry, a sliced sweep and an LRU cap."""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections import OrderedDict
from collections.abc import Sequence

from sortedcontainers import SortedList

from app.clock import now_ms
from app.models import ENGINE_DURATION_BUCKETS_S
from app.models import EncodedEvent
from app.models import LedgerCheck
from app.models import LedgerEntry
from app.models import LedgerFigures
from app.models import ListedRun
from app.models import RegistryStats
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunPage
from app.models import RunRecord
from app.models import RunRef
from app.models import RunState
from app.models import duration_bucket
from app.models import listing_order
from app.registry.base import FAILED_RETENTION_MS
from app.registry.base import LISTING_SCAN
from app.registry.base import SWEEP_SLICE
from app.registry.base import RegistryFull
from app.registry.base import Started
from app.registry.event_log import LiveLog
from app.registry.ledger import DEFAULT_LEDGER_KEYS
from app.registry.ledger import DEFAULT_LEDGER_MS
from app.registry.ledger import MemoryLedger
from app.registry.run_ids import RunIdClock

# Failed runs kept readable (metadata and the events they had) at most, whatever their age.
MAX_FAILED_RETAINED = 256


class _Done:
    __slots__ = ("expires_at", "hits", "record")

    def __init__(self, record: RunRecord, expires_at: int, hits: int) -> None:
        self.record = record
        self.expires_at = expires_at
        self.hits = hits


class _Running:
    __slots__ = ("hits", "identity", "log", "owner")

    def __init__(self, identity: RunIdentity, owner: str) -> None:
        self.identity = identity
        self.owner = owner
        self.log = LiveLog()
        self.hits = 0


class _Failed:
    __slots__ = ("error", "failed_at", "hits", "identity", "log")

    def __init__(self, running: _Running, error: RunError, failed_at: int) -> None:
        self.identity = running.identity
        self.log = running.log
        self.hits = running.hits
        self.error = error
        self.failed_at = failed_at


class MemoryRegistry:
    """In-process registry for one worker process with many threads (or greenlets).

    Done runs: every one has the same TTL, started when it finished, and only a lookup renews
    it, at the same moment it becomes the most recently used; so the dict's LRU order is also
    its expiry order. Expired entries therefore sit at the front, where the sweep and the
    eviction of the least recently used entry both find them in O(1). Running runs sit in a
    dict of their own: they neither expire nor are evicted, and their logs live here.
    """

    def __init__(
        self, ttl_ms: int, max_entries: int, ledger_ms: int = DEFAULT_LEDGER_MS,
        ledger_keys: int = DEFAULT_LEDGER_KEYS,
    ) -> None:
        self.ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._done: OrderedDict[str, _Done] = OrderedDict()  # by cache key, LRU (= expiry) order
        self._running: dict[str, _Running] = {}  # by cache key
        self._failed: OrderedDict[str, _Failed] = OrderedDict()  # by runId, oldest first
        self._keys_by_run_id: dict[str, str] = {}  # running and done runs
        # Every run held (running, done, failed) by listing order: a page is a range of it.
        self._listing: SortedList = SortedList()
        self._entries_by_scenario: Counter[str] = Counter()
        self._run_ids = RunIdClock()
        self._evictions = 0
        self._expirations = 0
        self._hits = 0
        self._misses = 0
        self._engine_runs = 0
        self._engine_failures = 0
        self._engine_ms_total = 0.0
        self._engine_durations: dict[str, list[int]] = {}
        self._engine_seconds: dict[str, float] = {}
        self._ledger = MemoryLedger(ledger_ms, ledger_keys)

    def touch(self, cache_key: str) -> RunRef | None:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            return self._hit(cache_key, now)

    def peek(self, cache_key: str) -> bool:
        with self._lock:
            return cache_key in self._running or self._live_done(cache_key, now_ms()) is not None

    def start(self, key: RunKey, engine_name: str, engine_version: str, owner: str) -> Started:
        now = now_ms()
        cache_key = key.digest
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            found = self._hit(cache_key, now)
            if found is not None:
                return Started(found.run_id, found.status, started=False)
            while len(self._done) + len(self._running) >= self._max_entries:
                if not self._done:
                    raise RegistryFull(f"all {self._max_entries} entries are runs still running")
                self._remove_done(next(iter(self._done)))
                self._evictions += 1
            run_id = self._run_ids.next(key, now, taken=self._keys_by_run_id.__contains__)
            # One cache-key string for the dicts and the identity, which the run's record shares.
            identity = RunIdentity(run_id, cache_key, key.engine_code_hash, engine_name, engine_version)
            self._running[cache_key] = _Running(identity, owner)
            self._keys_by_run_id[run_id] = cache_key
            self._listing.add(listing_order(run_id))
            self._entries_by_scenario[key.scenario_id] += 1
            self._misses += 1
            return Started(run_id, "running", started=True, identity=identity)

    def append(self, run_id: str, owner: str, first_position: int, events: Sequence[EncodedEvent]) -> bool:
        with self._lock:
            running = self._owned(run_id, owner)
            if running is None:
                return False
            if first_position <= running.log.count:  # a retry of an append that landed, or a clash
                return running.log.holds(first_position, events)
            if first_position != running.log.count + 1:
                return False
            running.log.extend(events)
            return True

    def finish(self, run_id: str, owner: str, record: RunRecord) -> LedgerCheck | None:
        now = now_ms()
        with self._lock:
            running = self._owned(run_id, owner)
            if running is None:  # or done already, by a finish with this transcript
                if not self._done_with(run_id, record):
                    return None
                return self._ledger.outcome(record.identity, record.events_digest, now)
            cache_key = running.identity.cache_key
            del self._running[cache_key]
            # Time passed while the engine ran: make room from expired entries first.
            self._sweep(now, SWEEP_SLICE)
            self._done[cache_key] = _Done(record, now + self.ttl_ms, running.hits)
            check = self._ledger.finished(record.identity, record.events_digest, now)
        running.log.end("done")  # readers finish from the log they hold; the registry keeps the record
        return check

    def _done_with(self, run_id: str, record: RunRecord) -> bool:
        cache_key = self._keys_by_run_id.get(run_id)
        done = self._done.get(cache_key) if cache_key is not None else None
        return done is not None and done.record.run_id == run_id and done.record.events_digest == record.events_digest

    def runs(self, limit: int, before: str | None) -> RunPage:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            self._prune_failed(now)
            if before is None:
                older = reversed(self._listing)
            else:
                older = self._listing.irange(maximum=listing_order(before), inclusive=(True, False), reverse=True)
            listed: list[ListedRun] = []
            passed = 0
            for _, run_id in older:
                if len(listed) == limit or passed == LISTING_SCAN:
                    return RunPage(listed, listed[-1].run_id if listed else run_id)
                run = self._listed(run_id, now)
                if run is None:
                    passed += 1
                else:
                    listed.append(run)
            return RunPage(listed, None)

    def _listed(self, run_id: str, now: int) -> ListedRun | None:
        """The run as the listing shows it; ``None`` for a done run past its expiry that the sweep
        has not reached (left in place: the listing is being read)."""
        cache_key = self._keys_by_run_id.get(run_id)
        if cache_key is None:
            return ListedRun(run_id, "failed") if run_id in self._failed else None
        if cache_key in self._running:
            return ListedRun(run_id, "running")
        done = self._done.get(cache_key)
        if done is None or now >= done.expires_at:
            return None
        return ListedRun(run_id, "done", self._ledger.entry(cache_key, now))

    def check_reproduction(self, record: RunRecord, replayed_digest: bytes) -> LedgerCheck:
        now = now_ms()
        with self._lock:
            return self._ledger.reproduced(record.identity, record.events_digest, replayed_digest, now)

    def ledger(self, cache_key: str) -> LedgerEntry | None:
        now = now_ms()
        with self._lock:
            return self._ledger.entry(cache_key, now)

    def ledger_figures(self, latest: int) -> LedgerFigures:
        now = now_ms()
        with self._lock:
            return self._ledger.figures(latest, now)

    def fail(self, run_id: str, owner: str, error: RunError) -> bool:
        now = now_ms()
        with self._lock:
            running = self._owned(run_id, owner)
            if running is None:  # or failed already, with this error
                failed = self._failed.get(run_id)
                return failed is not None and failed.error == error
            del self._running[running.identity.cache_key]
            self._forget(running.identity)
            self._failed[run_id] = _Failed(running, error, now)
            self._prune_failed(now)
        running.log.end(error)
        return True

    def get(self, run_id: str) -> RunState | None:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            cache_key = self._keys_by_run_id.get(run_id)
            if cache_key is not None:
                running = self._running.get(cache_key)
                if running is not None:
                    return RunState(running.identity, "running", running.log.count, running.hits)
                done = self._live_done(cache_key, now)
                if done is not None:
                    record = done.record
                    return RunState(record.identity, "done", record.event_count, done.hits, record, done.expires_at)
                return None
            self._prune_failed(now)
            failed = self._failed.get(run_id)
            if failed is None:
                return None
            return RunState(failed.identity, "failed", failed.log.count, failed.hits, error=failed.error)

    def open_log(self, run_id: str) -> LiveLog | None:
        with self._lock:
            cache_key = self._keys_by_run_id.get(run_id)
            running = self._running.get(cache_key) if cache_key is not None else None
            if running is not None:
                return running.log
            failed = self._failed.get(run_id)
            return failed.log if failed is not None else None

    def discard(self, run_id: str) -> None:
        with self._lock:
            cache_key = self._keys_by_run_id.get(run_id)
            if cache_key is not None and cache_key in self._done:
                self._remove_done(cache_key)

    def stats(self, top_scenarios: int) -> RegistryStats:
        # Sweep everything expired first, a slice per lock hold, so the count is true.
        while True:
            with self._lock:
                if self._sweep(now_ms(), SWEEP_SLICE) < SWEEP_SLICE:
                    top = heapq.nsmallest(
                        top_scenarios, self._entries_by_scenario.items(), key=lambda item: (-item[1], item[0])
                    )
                    return RegistryStats(
                        total_entries=len(self._done) + len(self._running),
                        entries_by_scenario=dict(top),
                        scenario_count=len(self._entries_by_scenario),
                        evictions=self._evictions,
                        expirations=self._expirations,
                        hits=self._hits,
                        misses=self._misses,
                        running=len(self._running),
                        engine_runs=self._engine_runs,
                        engine_failures=self._engine_failures,
                        engine_ms_total=self._engine_ms_total,
                        engine_durations={outcome: (tuple(buckets), self._engine_seconds[outcome])
                                          for outcome, buckets in self._engine_durations.items()},
                    )

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        outcome = "failed" if failed else "succeeded"
        with self._lock:
            self._engine_runs += 1
            self._engine_failures += failed
            self._engine_ms_total += duration_ms
            buckets = self._engine_durations.setdefault(outcome, [0] * (len(ENGINE_DURATION_BUCKETS_S) + 1))
            buckets[duration_bucket(duration_ms / 1000)] += 1
            self._engine_seconds[outcome] = self._engine_seconds.get(outcome, 0.0) + duration_ms / 1000

    def held_entries(self) -> int:
        """Done and running runs held in memory, expired ones the sweep has not reached included."""
        with self._lock:
            return len(self._done) + len(self._running)

    def sweep_expired(self, now: int, limit: int) -> int:
        """Remove up to ``limit`` expired entries as of ``now`` (one lock hold); how many."""
        with self._lock:
            return self._sweep(now, limit)

    def ping(self) -> None:
        """Always answers: it is this process."""

    def close(self) -> None:
        """Nothing runs in the background."""

    # The helpers below run with the lock held.

    def _hit(self, cache_key: str, now: int) -> RunRef | None:
        running = self._running.get(cache_key)
        if running is not None:
            running.hits += 1
            self._hits += 1
            return RunRef(running.identity.run_id, "running")
        done = self._live_done(cache_key, now)
        if done is None:
            return None
        done.expires_at = now + self.ttl_ms
        done.hits += 1
        self._hits += 1
        self._done.move_to_end(cache_key)
        return RunRef(done.record.run_id, "done")

    def holds(self, run_id: str, owner: str) -> bool:
        with self._lock:
            return self._owned(run_id, owner) is not None

    def _owned(self, run_id: str, owner: str) -> _Running | None:
        cache_key = self._keys_by_run_id.get(run_id)
        running = self._running.get(cache_key) if cache_key is not None else None
        return running if running is not None and running.owner == owner else None

    def _live_done(self, cache_key: str, now: int) -> _Done | None:
        done = self._done.get(cache_key)
        if done is not None and now >= done.expires_at:
            self._remove_done(cache_key)
            self._expirations += 1
            return None
        return done

    def _remove_done(self, cache_key: str) -> None:
        identity = self._done.pop(cache_key).record.identity
        self._forget(identity)
        self._listing.discard(listing_order(identity.run_id))

    def _forget(self, identity: RunIdentity) -> None:
        del self._keys_by_run_id[identity.run_id]
        scenario = identity.scenario_id
        self._entries_by_scenario[scenario] -= 1
        if not self._entries_by_scenario[scenario]:
            del self._entries_by_scenario[scenario]

    def _prune_failed(self, now: int) -> None:
        while self._failed and (
            len(self._failed) > MAX_FAILED_RETAINED
            or now - next(iter(self._failed.values())).failed_at >= FAILED_RETENTION_MS
        ):
            run_id, _ = self._failed.popitem(last=False)
            self._listing.discard(listing_order(run_id))

    def _sweep(self, now: int, limit: int) -> int:
        """Remove up to ``limit`` expired done entries from the front; return how many."""
        removed = 0
        while removed < limit and self._done:
            cache_key, done = next(iter(self._done.items()))
            if now < done.expires_at:
                break
            self._remove_done(cache_key)
            self._expirations += 1
            removed += 1
        return removed
