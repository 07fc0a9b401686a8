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
    """

    def __init__(self, events: Sequence[EncodedEvent] = ()) -> None:
        self._events: list[EncodedEvent] = list(events)
        self._ending: Ending = None
        self._changed = threading.Condition()

    @property
    def count(self) -> int:
        return len(self._events)

    @property
    def ending(self) -> Ending:
        return self._ending

    def events(self) -> list[EncodedEvent]:
        """Every event recorded so far (a copy)."""
        with self._changed:
            return list(self._events)

    def extend(self, events: Sequence[EncodedEvent]) -> None:
        with self._changed:
            if self._ending is None:
                self._events.extend(events)
                self._changed.notify_all()

    def end(self, ending: str | RunError) -> None:
        """Close the log: no event is appended after this. The first ending stands."""
        with self._changed:
            if self._ending is None:
                self._ending = ending
                self._changed.notify_all()

    def read(self, after: int, timeout: float) -> Chunk:
        """The events after position ``after`` (1-based positions), waiting up to ``timeout``
        seconds for one when there is none yet and the log has not ended."""
        with self._changed:
            # wait_for keeps time with threading's own clock, which a frozen test clock leaves running
            self._changed.wait_for(lambda: len(self._events) > after or self._ending is not None, timeout)
            return Chunk(self._events[after:], self._ending)

    def wait_end(self, timeout: float) -> Ending:
        """The ending, waiting up to ``timeout`` seconds for it; None if the run still runs."""
        with self._changed:
            self._changed.wait_for(lambda: self._ending is not None, timeout)
            return self._ending
