"""The embedded registry: a dict behind a lock, with lazy expiry, a sliced sweep and an LRU cap."""

from __future__ import annotations

import heapq
import threading
from collections import Counter
from collections import OrderedDict
from collections.abc import Callable

from app.clock import now_ms
from app.models import LiveRun
from app.models import RegistryStats
from app.models import RunKey
from app.models import RunRecord
from app.registry.run_ids import RunIdReservations
from app.registry.single_flight import SingleFlight

# Expired entries removed per registry call. Each call adds at most one entry, so the
# sweep outpaces growth, while no call holds the lock for long.
SWEEP_SLICE = 64


class _Entry:
    __slots__ = ("expires_at", "hits", "record")

    def __init__(self, record: RunRecord, expires_at: int) -> None:
        self.record = record
        self.expires_at = expires_at
        self.hits = 0


class MemoryRegistry:
    """In-process registry for one worker process with many threads.

    Every entry has the same TTL and only a lookup renews it, at the same moment it
    becomes the most recently used; so the dict's LRU order is also its expiry order.
    Expired entries therefore sit at the front, where the sweep and the eviction of
    the least recently used entry both find them in O(1).
    """

    def __init__(self, ttl_ms: int, max_entries: int) -> None:
        self.ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._keys_by_run_id: dict[str, str] = {}
        self._entries_by_scenario: Counter[str] = Counter()
        self._flights: SingleFlight[tuple[str, bool]] = SingleFlight()
        self._run_ids = RunIdReservations()
        self._evictions = 0
        self._expirations = 0
        self._hits = 0
        self._misses = 0
        self._engine_runs = 0
        self._engine_failures = 0
        self._engine_ms_total = 0.0

    def touch(self, cache_key: str) -> str | None:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            entry = self._renew(cache_key, now)
            return entry.record.run_id if entry is not None else None

    def create_once(self, key: RunKey, build: Callable[[str], RunRecord]) -> tuple[str, bool]:
        cache_key = key.digest

        def build_unless_live() -> tuple[str, bool]:
            # Checked again inside the flight: a flight that landed just before this one
            # began has already stored the run.
            run_id = self.touch(cache_key)
            if run_id is not None:
                return run_id, False
            with self._lock:
                run_id = self._run_ids.reserve(key, now_ms(), taken=self._keys_by_run_id.__contains__)
            try:
                record = build(run_id)  # the engine runs here, outside the lock: other keys are never held up
                with self._lock:
                    self._insert(record, now_ms())
                    self._misses += 1
            finally:
                with self._lock:
                    self._run_ids.release(run_id)
            return record.run_id, True

        (run_id, created), leader = self._flights.run(cache_key, build_unless_live)
        if not leader:
            self.touch(cache_key)  # a caller that waited for another's build has a hit on that run
        return run_id, created and leader

    def get(self, run_id: str) -> LiveRun | None:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            cache_key = self._keys_by_run_id.get(run_id)
            entry = self._live_entry(cache_key, now) if cache_key is not None else None
            return LiveRun(entry.record, entry.expires_at, entry.hits) if entry is not None else None

    def stats(self, top_scenarios: int) -> RegistryStats:
        # Sweep everything expired first, a slice per lock hold, so the count is true.
        while True:
            with self._lock:
                if self._sweep(now_ms(), SWEEP_SLICE) < SWEEP_SLICE:
                    top = heapq.nsmallest(
                        top_scenarios, self._entries_by_scenario.items(), key=lambda item: (-item[1], item[0])
                    )
                    return RegistryStats(
                        total_entries=len(self._entries),
                        entries_by_scenario=dict(top),
                        scenario_count=len(self._entries_by_scenario),
                        evictions=self._evictions,
                        expirations=self._expirations,
                        hits=self._hits,
                        misses=self._misses,
                        engine_runs=self._engine_runs,
                        engine_failures=self._engine_failures,
                        engine_ms_total=self._engine_ms_total,
                    )

    def discard(self, run_id: str) -> None:
        with self._lock:
            cache_key = self._keys_by_run_id.get(run_id)
            if cache_key is not None:
                self._remove(cache_key)

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        with self._lock:
            self._engine_runs += 1
            self._engine_failures += failed
            self._engine_ms_total += duration_ms

    def ping(self) -> None:
        """Always answers: it is this process."""

    # The helpers below run with the lock held.

    def _renew(self, cache_key: str, now: int) -> _Entry | None:
        entry = self._live_entry(cache_key, now)
        if entry is not None:
            entry.expires_at = now + self.ttl_ms
            entry.hits += 1
            self._hits += 1
            self._entries.move_to_end(cache_key)
        return entry

    def _live_entry(self, cache_key: str, now: int) -> _Entry | None:
        entry = self._entries.get(cache_key)
        if entry is not None and now >= entry.expires_at:
            self._remove(cache_key)
            self._expirations += 1
            return None
        return entry

    def _insert(self, record: RunRecord, now: int) -> None:
        # Time passed while the engine ran: make room from expired entries before evicting live ones.
        self._sweep(now, SWEEP_SLICE)
        while len(self._entries) >= self._max_entries:
            self._remove(next(iter(self._entries)))
            self._evictions += 1
        self._entries[record.cache_key] = _Entry(record, now + self.ttl_ms)
        self._keys_by_run_id[record.run_id] = record.cache_key
        self._entries_by_scenario[record.scenario_id] += 1

    def _remove(self, cache_key: str) -> None:
        record = self._entries.pop(cache_key).record
        del self._keys_by_run_id[record.run_id]
        self._entries_by_scenario[record.scenario_id] -= 1
        if not self._entries_by_scenario[record.scenario_id]:
            del self._entries_by_scenario[record.scenario_id]

    def _sweep(self, now: int, limit: int) -> int:
        """Remove up to ``limit`` expired entries from the front; return how many."""
        removed = 0
        while removed < limit and self._entries:
            cache_key, entry = next(iter(self._entries.items()))
            if now < entry.expires_at:
                break
            self._remove(cache_key)
            self._expirations += 1
            removed += 1
        return removed
