"""Room for connections that wait on runs (live streams, waiting lookups and reads) in a process."""

from __future__ import annotations

import threading


class WaitingRoom:
    """At most ``capacity`` waiting connections, and at most ``per_client`` of them one client's.

    A waiting connection is a greenlet: cheap, but not free, and a share per client keeps one
    client (800 streams from one address took every place before) from turning everyone else's
    waits into immediate 202s and their streams into 503s. Taking a place never waits.
    """

    def __init__(self, capacity: int, per_client: int) -> None:
        self.capacity = capacity
        self.per_client = per_client
        self._lock = threading.Lock()
        self.in_use = 0
        self._by_client: dict[str, int] = {}  # only clients waiting now: bounded by the capacity

    def take(self, client: str | None) -> bool:
        """A place for ``client`` (``None``: a wait that counts only against the whole)."""
        with self._lock:
            if self.in_use >= self.capacity:
                return False
            if client is not None:
                held = self._by_client.get(client, 0)
                if held >= self.per_client:
                    return False
                self._by_client[client] = held + 1
            self.in_use += 1
            return True

    def give_back(self, client: str | None) -> None:
        with self._lock:
            self.in_use -= 1
            if client is not None:
                held = self._by_client.pop(client) - 1
                if held:
                    self._by_client[client] = held
