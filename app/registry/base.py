"""The registry interface every storage backend implements, and its errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.models import EncodedEvent
from app.models import LedgerCheck
from app.models import LedgerEntry
from app.models import LedgerFigures
from app.models import RegistryStats
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunPage
from app.models import RunRecord
from app.models import RunRef
from app.models import RunState
from app.registry.event_log import LiveLog

# How long a failed run's metadata and events stay readable (its key is free at once).
FAILED_RETENTION_MS = 5 * 60_000
# Expired entries removed per registry call that may add one (both backends). Each such call adds
# at most one entry, so the sweep outpaces growth, while no call holds the registry for long.
SWEEP_SLICE = 64


# Index entries of runs gone (expired, evicted, failed and dropped) one listing passes at most,
# beyond its page: they are removed as they are found, so the listing's cost stays bounded.
LISTING_SCAN = 64


class RegistryUnavailable(Exception):
    """The backend cannot be reached; the API answers 503 UNAVAILABLE."""


class RegistryFull(Exception):
    """Every entry is a run still running: none can be evicted for another."""


@dataclass(frozen=True)
class Started:
    """What ``start`` found or made: the key's run, and whether this call started it (then
    ``identity`` is the new run's, for its record to share)."""

    run_id: str
    status: str
    started: bool
    identity: RunIdentity | None = None


class Registry(Protocol):
    """Runs by cache key and by runId: each running, then done (for a TTL) or failed; and the
    determinism ledger, which outlives them: each key's reference transcript digest, kept for
    ``ledger_ms`` after the key's last check, for at most ``ledger_keys`` keys (the least
    recently checked forgotten first).

    A run starts ``running``, with no expiry: a running run is never expired nor evicted.
    Its events are appended as the engine yields them, only by the holder of its ``owner``
    token. ``finish`` makes it ``done``: its transcript is stored and its TTL starts; only a
    lookup (``touch`` or ``start`` of its key) renews it to the full TTL and makes it the
    most recently used; ``get`` does neither. A done run is live while ``now < expires_at``.
    ``fail`` makes it ``failed``: its key is free at once (the next lookup starts a new run),
    its metadata and the events it had stay readable for ``FAILED_RETENTION_MS``. When the
    registry is full, starting a run evicts the least recently used done run. Every method
    may raise ``RegistryUnavailable`` and nothing else of its own.
    """

    def touch(self, cache_key: str) -> RunRef | None:
        """A lookup hit: the key's run, running or done; a done one is renewed. Counts the hit.

        :returns: the run, or ``None`` if the key has none.
        """
        ...

    def peek(self, cache_key: str) -> bool:
        """Whether the key has a run (running, or done and live), without renewing it or counting
        a hit: a request that may be refused looks before it touches anything."""
        ...

    def start(self, key: RunKey, engine_name: str, engine_version: str, owner: str) -> Started:
        """The key's run, or a new running run of it, created at once.

        However many callers (threads, and with a shared backend processes and hosts) start
        one key at once, one run is created; the others get it as a hit. The new run's runId
        is ``key.run_id(createdAt)`` for the first millisecond from now that no live run of
        any key, in any process, holds, so two live runs never share a runId (the cache key
        alone would not say so: deploys with different engineCodeHash have different keys
        for the same scenario and seed). ``owner`` is the token its events must come with.

        :raises RegistryFull: every entry is a running run; nothing was created.
        """
        ...

    def append(self, run_id: str, owner: str, first_position: int, events: Sequence[EncodedEvent]) -> bool:
        """Record ``events`` at positions ``first_position``, ``first_position + 1``, ...

        Idempotent: the same events at the same positions again (a retry of an append whose
        answer was lost) are recognised, and recorded once.

        :returns: ``False`` if the run is not ``owner``'s to write (it failed meanwhile, or
            another owner holds it), or a position is neither the next one nor holds these
            events already: nothing was recorded.
        """
        ...

    def finish(self, run_id: str, owner: str, record: RunRecord) -> LedgerCheck | None:
        """Make the run done with its transcript; its TTL starts now. In the same step the
        transcript meets the key's determinism ledger: it becomes the key's reference if the
        key has none (so of two runs of a key finishing one after the other, one is), else it is
        checked against the reference (which a divergence never replaces). Idempotent:
        finishing a run that is done with this transcript already answers the check it had
        (not counted again) and changes nothing.

        :returns: the check, or ``None`` if the run is not ``owner``'s running run: nothing changed.
        """
        ...

    def runs(self, limit: int, before: str | None) -> RunPage:
        """Runs that can be read (running, done and live, failed and kept), newest first: at most
        ``limit`` of those older than ``before``, a runId (creation time, then runId, order them;
        the run itself need not exist any more), or the newest ones. Each done run with its key's
        ledger entry. The cost is bounded by ``limit``, not by the runs held: a page may come short
        of ``limit`` when it passed runs gone meanwhile (at most ``LISTING_SCAN`` of them), and
        ``next`` then still leads on.
        """
        ...

    def check_reproduction(self, record: RunRecord, replayed_digest: bytes) -> LedgerCheck:
        """A verify of ``record``: the replayed transcript's digest checked against the key's
        reference (``record`` becomes the reference of a key that has none). Counted."""
        ...

    def ledger(self, cache_key: str) -> LedgerEntry | None:
        """The key's ledger entry, or ``None`` if it has none (never done, or forgotten)."""
        ...

    def ledger_figures(self, latest: int) -> LedgerFigures:
        """Keys held, checks since the ledger began, and the ``latest`` divergences, newest first."""
        ...

    def fail(self, run_id: str, owner: str, error: RunError) -> bool:
        """Make the run failed with ``error``, and free its key. Idempotent: failing a run that
        failed with this error already is ``True`` and changes nothing.

        :returns: ``False`` if the run is not ``owner``'s running run: nothing changed.
        """
        ...

    def holds(self, run_id: str, owner: str) -> bool:
        """Whether the run is running under ``owner`` still, as far as this process knows (no
        round trip: with Redis, whether this process still keeps its lease). A recorder whose
        engine is silent asks it now and then, and stops the engine when it no longer holds."""
        ...

    def get(self, run_id: str) -> RunState | None:
        """The run with this runId (running, done and live, or failed and retained), without renewing it.

        :returns: the run, or ``None`` if it never existed, expired, was evicted or is no longer retained.
        """
        ...

    def open_log(self, run_id: str) -> LiveLog | None:
        """The events of a run that is running (or failed and retained), as they arrive.

        The log ends when the run ends. A reader keeps reading its log after the run is done,
        even once the registry no longer keeps the log itself.

        :returns: the log, or ``None`` if the run is done or unknown (a done run's events are
            in its record).
        """
        ...

    def discard(self, run_id: str) -> None:
        """Remove a done run the service found damaged (its transcript does not match its digest),
        so that its key's next lookup starts a new run. Nothing happens if it is not there."""
        ...

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        """Count one execution of the engine (a new run or a verification) and its time."""
        ...

    def stats(self, top_scenarios: int) -> RegistryStats:
        """Entries (running and done); since start: evictions, expirations, hits, misses, engine runs.

        ``entries_by_scenario`` holds the ``top_scenarios`` scenarios with the most entries
        (most first, ties by name), however many there are: what it costs is bounded by
        ``top_scenarios``, not by the registry's contents. ``0`` asks for counts alone.
        """
        ...

    def ping(self) -> None:
        """Check that the backend answers.

        :raises RegistryUnavailable: it does not.
        """
        ...

    def close(self) -> None:
        """Stop background work (followers, lease keeping) and release connections."""
        ...
