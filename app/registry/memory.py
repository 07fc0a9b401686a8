"""The embedded registry: a dict behind a lock, with lazy expiry, a sliced sweep and an LRU cap."""

from __future__ import annotations

import threading
from collections import Counter
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from app.clock import now_ms
from app.models import LiveRun
from app.models import RegistryStats
from app.models import RunRecord

# Expired entries removed per registry call. Each call adds at most one entry, so the
# sweep outpaces growth, while no call holds the lock for long.
SWEEP_SLICE = 64


class _Entry:
    __slots__ = ("expires_at", "hits", "record")

    def __init__(self, record: RunRecord, expires_at: int) -> None:
        self.record = record
        self.expires_at = expires_at
        self.hits = 0

    def live_run(self) -> LiveRun:
        return LiveRun(self.record, self.expires_at, self.hits)


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
        self._in_flight: dict[str, Future[RunRecord]] = {}
        self._evictions = 0
        self._expirations = 0

    def touch(self, cache_key: str) -> LiveRun | None:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            return self._renew(cache_key, now)

    def create_once(self, cache_key: str, build: Callable[[], RunRecord]) -> tuple[LiveRun, bool]:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            live = self._renew(cache_key, now)
            if live is not None:
                return live, False
            flight = self._in_flight.get(cache_key)
            if flight is None:
                flight = self._in_flight[cache_key] = Future()
                leader = True
            else:
                leader = False
        if not leader:
            return self._after_wait(cache_key, flight.result()), False

        # The engine runs here, outside the lock: other keys are never held up by it.
        try:
            record = build()
        except BaseException as err:
            with self._lock:
                del self._in_flight[cache_key]
            flight.set_exception(err)
            raise
        with self._lock:
            live = self._insert(record, now_ms())
            del self._in_flight[cache_key]
        flight.set_result(record)
        return live, True

    def get(self, run_id: str) -> LiveRun | None:
        now = now_ms()
        with self._lock:
            self._sweep(now, SWEEP_SLICE)
            cache_key = self._keys_by_run_id.get(run_id)
            entry = self._live_entry(cache_key, now) if cache_key is not None else None
            return entry.live_run() if entry is not None else None

    def stats(self) -> RegistryStats:
        # Sweep everything expired first, a slice per lock hold, so the count is true.
        while True:
            with self._lock:
                if self._sweep(now_ms(), SWEEP_SLICE) < SWEEP_SLICE:
                    return RegistryStats(
                        total_entries=len(self._entries),
                        entries_by_scenario=dict(self._entries_by_scenario),
                        evictions=self._evictions,
                        expirations=self._expirations,
                    )

    def _after_wait(self, cache_key: str, record: RunRecord) -> LiveRun:
        """A caller that waited for another's build: its lookup is a hit on that run."""
        now = now_ms()
        with self._lock:
            live = self._renew(cache_key, now)
        if live is not None and live.record is record:
            return live
        # Already evicted or expired again: the run was still made for this caller.
        return LiveRun(record, now + self.ttl_ms, 0)

    # The helpers below run with the lock held.

    def _renew(self, cache_key: str, now: int) -> LiveRun | None:
        entry = self._live_entry(cache_key, now)
        if entry is None:
            return None
        entry.expires_at = now + self.ttl_ms
        entry.hits += 1
        self._entries.move_to_end(cache_key)
        return entry.live_run()

    def _live_entry(self, cache_key: str, now: int) -> _Entry | None:
        entry = self._entries.get(cache_key)
        if entry is not None and now >= entry.expires_at:
            self._remove(cache_key)
            self._expirations += 1
            return None
        return entry

    def _insert(self, record: RunRecord, now: int) -> LiveRun:
        # Time passed while the engine ran: make room from expired entries before evicting live ones.
        self._sweep(now, SWEEP_SLICE)
        while len(self._entries) >= self._max_entries:
            self._remove(next(iter(self._entries)))
            self._evictions += 1
        entry = self._entries[record.cache_key] = _Entry(record, now + self.ttl_ms)
        self._keys_by_run_id[record.run_id] = record.cache_key
        self._entries_by_scenario[record.scenario_id] += 1
        return entry.live_run()

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
