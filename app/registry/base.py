"""The registry interface every storage backend implements, and its one error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.models import LiveRun
from app.models import RegistryStats
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

    def create_once(self, cache_key: str, build: Callable[[], RunRecord]) -> tuple[str, bool]:
        """Get the key's live run, or build and store it exactly once.

        However many callers (threads, and with a shared backend processes and hosts)
        ask for one key at once, ``build`` runs once, outside any lock that guards
        other keys; the other callers wait for it and get its run as a hit. A run is
        stored whole, with its events, or not at all. If ``build`` raises, nothing is
        stored, the callers waiting in this process get the same exception, and the
        next call builds again (a caller waiting in another process is such a call).

        :returns: the runId, and ``True`` if this call built it.
        """
        ...

    def get(self, run_id: str) -> LiveRun | None:
        """The live run with this runId, without renewing it.

        :returns: the run, or ``None`` if it never existed, expired or was evicted.
        """
        ...

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        """Count one execution of the engine (a new run or a verification) and its time."""
        ...

    def stats(self) -> RegistryStats:
        """Live entries (by scenario); since start: evictions, expirations, hits, misses, engine runs."""
        ...

    def ping(self) -> None:
        """Check that the backend answers.

        :raises RegistryUnavailable: it does not.
        """
        ...

