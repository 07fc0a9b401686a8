"""The registry interface every storage backend implements, and its one error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.models import LiveRun
from app.models import RegistryStats
from app.models import RunKey
from app.models import RunRecord


class RegistryUnavailable(Exception):
    """The backend cannot be reached; the API answers 503 UNAVAILABLE."""


class Registry(Protocol):
    """Stores run records by cache key and by runId, for a fixed TTL and capacity.

    A record is live while ``now < expires_at``. Only a lookup (``touch`` or
    ``create_once``) renews its expiry to the full TTL and makes it the most recently
    used; ``get`` does neither. When the registry is full, creating an entry evicts the
    least recently used one. Every method may raise ``RegistryUnavailable`` and nothing
    else of its own.
    """

    def touch(self, cache_key: str) -> str | None:
        """A lookup hit: renew the key's entry and count the hit.

        :returns: the runId of the key's live run, or ``None`` if it has none.
        """
        ...

    def create_once(self, key: RunKey, build: Callable[[str], RunRecord]) -> tuple[str, bool]:
        """Get the key's live run, or build and store it exactly once.

        However many callers (threads, and with a shared backend processes and hosts)
        ask for one key at once, ``build`` runs once, outside any lock that guards
        other keys; the other callers wait for it and get its run as a hit. A run is
        stored whole, with its events, or not at all. If ``build`` raises, nothing is
        stored, the callers waiting in this process get the same exception, and the
        next call builds again (a caller waiting in another process is such a call).

        ``build`` is given the runId to record the run under: ``key.run_id(createdAt)`` for
        the first millisecond from now that no live run of any key, in any process,
        holds or is being built under, so two live runs never share a runId (the
        cache key alone would not say so: deploys with different engineCodeHash have
        different keys for the same scenario and seed).

        :returns: the runId, and ``True`` if this call built it.
        """
        ...

    def get(self, run_id: str) -> LiveRun | None:
        """The live run with this runId, without renewing it.

        :returns: the run, or ``None`` if it never existed, expired or was evicted.
        """
        ...

    def discard(self, run_id: str) -> None:
        """Remove a run the service found damaged (its transcript does not match its digest),
        so that its key's next lookup starts a new run. Nothing happens if it is not there."""
        ...

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        """Count one execution of the engine (a new run or a verification) and its time."""
        ...

    def stats(self, top_scenarios: int) -> RegistryStats:
        """Live entries; since start: evictions, expirations, hits, misses, engine runs.

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

