"""A running run's events as they arrive, and readers waiting for more."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from app.models import EncodedEvent
from app.models import RunError

# How a log ended: "done", or the run's error; None while it runs.
Ending = str | RunError | None


@dataclass(frozen=True)
class Chunk:
    """What a reader gets: the events after its position (possibly none), and the ending, if any."""

    events: Sequence[EncodedEvent]
    ending: Ending


class LiveLog:
    """The events of one run in this process, appended by its recorder, read by any number of
    readers (live streams, waiting lookups), each at its own position.

    In the in-memory registry this is the run's log itself; on Redis, a local copy that one
    follower keeps filling from the run's stream for every reader in the process.

    One writer, many readers. Readers wait on an Event that the writer sets and replaces at each
    change, rather than on a Condition: waking 500 readers of one run then costs one set, not
    500 turns at a shared lock.
    """

    def __init__(self, events: Sequence[EncodedEvent] = ()) -> None:
        self._events: list[EncodedEvent] = list(events)
        self._ending: Ending = None
        self._changed = threading.Event()
        self._ended = threading.Event()

    @property
    def count(self) -> int:
        return len(self._events)

    @property
    def ending(self) -> Ending:
        return self._ending

    def events(self) -> list[EncodedEvent]:
        """Every event recorded so far (a copy)."""
        return list(self._events)

    def holds(self, first_position: int, events: Sequence[EncodedEvent]) -> bool:
        """Whether these events are recorded already, at these positions (a retried append)."""
        return self._events[first_position - 1:first_position - 1 + len(events)] == list(events)

    def extend(self, events: Sequence[EncodedEvent]) -> None:
        if self._ending is None:
            self._events.extend(events)
            self._wake()

    def end(self, ending: str | RunError) -> None:
        """Close the log: no event is appended after this. The first ending stands."""
        if self._ending is None:
            self._ending = ending
            self._ended.set()
            self._wake()

    def read(self, after: int, timeout: float) -> Chunk:
        """The events after position ``after`` (1-based positions), waiting up to ``timeout``
        seconds for one when there is none yet and the log has not ended."""
        changed = self._changed  # taken before looking: a change after the look sets this one
        if len(self._events) <= after and self._ending is None:
            changed.wait(timeout)
        return Chunk(self._events[after:], self._ending)

    def wait_end(self, timeout: float) -> Ending:
        """The ending, waiting up to ``timeout`` seconds for it; None if the run still runs."""
        self._ended.wait(timeout)
        return self._ending

    def _wake(self) -> None:
        changed, self._changed = self._changed, threading.Event()
        changed.set()
