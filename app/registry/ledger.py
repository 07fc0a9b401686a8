"""The determinism ledger in memory: each cache key's reference, the checks against it, bounded.

Not locked of its own: the in-memory registry calls it under its lock, so a run's finish and
its check are one step, as they are one Lua script on Redis (``lua/prelude.lua``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections import deque

from app.models import Divergence
from app.models import LedgerCheck
from app.models import LedgerEntry
from app.models import LedgerFigures
from app.models import RunIdentity

LATEST_DIVERGENCES = 20  # kept for /registry/determinism (both backends)
DEFAULT_LEDGER_MS = 30 * 24 * 3600 * 1000
DEFAULT_LEDGER_KEYS = 100_000
# Forgotten keys removed per check, from the least recently checked: each check adds at most one
# key, so forgetting outpaces growth, and no check holds the registry for long.
FORGET_SLICE = 64


class _Entry:
    __slots__ = ("checked_at", "checks", "digest", "divergences", "run_id")

    def __init__(self, run_id: str, digest: bytes, checked_at: int) -> None:
        self.run_id = run_id
        self.digest = digest
        self.checks = 0
        self.divergences = 0
        self.checked_at = checked_at

    def view(self) -> LedgerEntry:
        return LedgerEntry(self.run_id, self.digest, self.checks, self.divergences)


class MemoryLedger:
    """References by cache key, least recently checked first; at most ``max_keys`` of them, each
    forgotten ``ttl_ms`` after its last check. Every operation is O(1) (amortised).

    Keys that diverged are kept apart and forgotten past the bound only once no key that never
    diverged is left: a caller making new keys by the thousand cannot push a divergence out.
    """

    def __init__(self, ttl_ms: int = DEFAULT_LEDGER_MS, max_keys: int = DEFAULT_LEDGER_KEYS) -> None:
        self.ttl_ms = ttl_ms
        self.max_keys = max_keys
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # never diverged
        self._diverged_keys: OrderedDict[str, _Entry] = OrderedDict()
        self._reproduced = 0
        self._diverged = 0
        self._divergences: deque[Divergence] = deque(maxlen=LATEST_DIVERGENCES)

    def finished(self, identity: RunIdentity, digest: bytes, now: int) -> LedgerCheck:
        """A done run of the key: its reference if the key has none, else a check against it."""
        return self._check(identity, identity.run_id, digest, digest, now, counted_when_new=False)

    def reproduced(self, identity: RunIdentity, recorded: bytes, replayed: bytes, now: int) -> LedgerCheck:
        """A verify of the run ``identity``: its replay checked (the recorded run becomes the
        reference of a key that has none)."""
        return self._check(identity, identity.run_id, recorded, replayed, now, counted_when_new=True)

    def outcome(self, identity: RunIdentity, digest: bytes, now: int) -> LedgerCheck:
        """What ``finished`` answered for this run, without counting again (a retried finish)."""
        entry = self._live(identity.cache_key, now)
        if entry is None:
            return LedgerCheck("reference", LedgerEntry(identity.run_id, digest, 0, 0))
        if entry.run_id == identity.run_id:
            return LedgerCheck("reference", entry.view())
        return LedgerCheck("reproduced" if entry.digest == digest else "diverged", entry.view())

    def entry(self, cache_key: str, now: int) -> LedgerEntry | None:
        entry = self._live(cache_key, now)
        return entry.view() if entry is not None else None

    def figures(self, latest: int, now: int) -> LedgerFigures:
        self._forget_stale(now)
        return LedgerFigures(len(self._entries) + len(self._diverged_keys), self._reproduced, self._diverged,
                             tuple(list(self._divergences)[:latest]))

    def _check(
        self, identity: RunIdentity, run_id: str, reference: bytes, digest: bytes, now: int, counted_when_new: bool
    ) -> LedgerCheck:
        self._forget_stale(now)
        cache_key = identity.cache_key
        entry = self._live(cache_key, now)
        if entry is None:
            entry = self._entries[cache_key] = _Entry(run_id, reference, now)
            while len(self._entries) + len(self._diverged_keys) > self.max_keys:
                (self._entries or self._diverged_keys).popitem(last=False)
            if cache_key not in self._entries:  # the bound is all diverged keys: the newest one goes
                return LedgerCheck("reference", entry.view())
            if not counted_when_new:
                return LedgerCheck("reference", entry.view())
        entry.checked_at = now
        kept = self._diverged_keys if entry.divergences else self._entries
        kept.move_to_end(cache_key)
        entry.checks += 1
        if digest == entry.digest:
            self._reproduced += 1
            return LedgerCheck("reproduced", entry.view())
        if not entry.divergences:  # kept apart from now on
            self._diverged_keys[cache_key] = self._entries.pop(cache_key)
        entry.divergences += 1
        self._diverged += 1
        self._divergences.appendleft(Divergence(
            cache_key, identity.engine_code_hash, entry.run_id, entry.digest.hex(), run_id, digest.hex(), now))
        return LedgerCheck("diverged", entry.view())

    def _live(self, cache_key: str, now: int) -> _Entry | None:
        for kept in (self._entries, self._diverged_keys):
            entry = kept.get(cache_key)
            if entry is not None:
                if entry.checked_at + self.ttl_ms <= now:
                    del kept[cache_key]
                    return None
                return entry
        return None

    def _forget_stale(self, now: int) -> None:
        for kept in (self._entries, self._diverged_keys):
            for _ in range(FORGET_SLICE):
                oldest = next(iter(kept.values()), None)
                if oldest is None or oldest.checked_at + self.ttl_ms > now:
                    break
                kept.popitem(last=False)
