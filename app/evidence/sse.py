"""Server-Sent Events: one message per recorded event, resumable by position."""

from __future__ import annotations

import time
from collections.abc import Callable
from collections.abc import Iterator

from app.engine.base import Event
from app.models import canonical_json

RETRY_MS = 3000


def sse_messages(
    events: list[Event], after: int = 0, pace_ms: int = 0, sleep: Callable[[float], None] = time.sleep
) -> Iterator[bytes]:
    """A ``retry:`` hint, then ``id:``/``event:``/``data:`` for each event after position ``after``.

    Positions count from 1, so a client resuming with the last id it saw gets no gap and
    no duplicate. ``pace_ms`` waits between events (not before the first).
    """
    yield b"retry: %d\n\n" % RETRY_MS
    for position in range(after + 1, len(events) + 1):
        if pace_ms and position > after + 1:
            sleep(pace_ms / 1000)
        event = events[position - 1]
        # Event types are checked at recording ([A-Za-z0-9._-]) and compact JSON has no raw
        # newline, so neither can break the message framing.
        yield b"id: %d\nevent: %s\ndata: %s\n\n" % (position, event["type"].encode(), canonical_json(event["data"]))
