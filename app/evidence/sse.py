"""Server-Sent Events: one message per recorded event, resumable by position."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence

from app.models import EncodedEvent
from app.models import RunError

RETRY_MS = 3000
RETRY = b"retry: %d\n\n" % RETRY_MS
# A comment line: it keeps proxies and clients from taking a quiet stream for a dead one.
KEEPALIVE = b": keepalive\n\n"


def sse_frame(position: int, event: EncodedEvent) -> bytes:
    """``id:``/``event:``/``data:`` of the event at ``position`` (1-based).

    Event types are checked at recording ([A-Za-z0-9._-]) and compact JSON has no raw
    newline, so neither can break the message framing.
    """
    event_type, data = event
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (position, event_type.encode(), data)


def sse_error(error: RunError) -> bytes:
    """The message that ends the stream of a failed run: no id, so a client resumes from its last event."""
    data = json.dumps({"type": error.type, "message": error.message}, ensure_ascii=False, separators=(",", ":"))
    return b"event: error\ndata: %s\n\n" % data.encode("utf-8")


def sse_frames(
    events: Sequence[EncodedEvent], after: int, pace_ms: int = 0, sleep: Callable[[float], None] = time.sleep
) -> Iterator[bytes]:
    """The messages of the events after position ``after``, paced by ``pace_ms`` (waits between
    events, not before the first). Positions count from 1, so a client resuming with the last id
    it saw gets no gap and no duplicate."""
    for position in range(after + 1, len(events) + 1):
        if pace_ms and position > after + 1:
            sleep(pace_ms / 1000)
        yield sse_frame(position, events[position - 1])
