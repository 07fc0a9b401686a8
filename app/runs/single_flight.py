"""Per-key single-flight within one process: one caller runs, the others wait for its result."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic
from typing import TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """However many threads call ``run`` for one key at once, ``work`` runs once.

    The others wait for it (not for any other key) and get its result, or its exception.
    A call after the flight has landed starts a new flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, Future[T]] = {}
        self._callers: dict[str, int] = {}

    def run(self, key: str, work: Callable[[], T]) -> tuple[T, bool]:
        """:returns: the result, and ``True`` for the caller whose ``work`` produced it."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
            self._callers[key] = self._callers.get(key, 0) + 1
        if not leader:
            return flight.result(), False
        try:
            result = work()
        except BaseException as err:
            self._land(key)
            flight.set_exception(err)
            raise
        self._land(key)
        flight.set_result(result)
        return result, True

    def callers(self, key: str) -> int:
        """How many callers share the key's flight now (0 when none is in flight)."""
        with self._lock:
            return self._callers.get(key, 0)

    def _land(self, key: str) -> None:
        with self._lock:
            del self._flights[key]
            del self._callers[key]
