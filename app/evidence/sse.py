"""Server-Sent Events: one message per recorded event, resumable by position."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass

from app.models import EncodedEvent
from app.models import RunError
from app.schemas import END_ID

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
    """The message that ends the stream of a failed run, with the id ``END_ID``."""
    data = json.dumps({"type": error.type, "message": error.message}, ensure_ascii=False, separators=(",", ":"))
    return b"id: %s\nevent: error\ndata: %s\n\n" % (END_ID.encode(), data.encode("utf-8"))


def paced(messages: Iterable[bytes], pace_ms: int, sleep: Callable[[float], None] = time.sleep) -> Iterator[bytes]:
    """The messages, ``pace_ms`` apart (waits between messages, not before the first)."""
    for number, message in enumerate(messages):
        if pace_ms and number:
            sleep(pace_ms / 1000)
        yield message


@dataclass(frozen=True)
class SseReplay:
    """A done run's whole event stream, encoded once: ``retry:`` then every event's message, and
    where each message ends, so a replay from any position is one slice of the same bytes."""

    body: bytes
    ends: tuple[int, ...]  # ends[p]: where the message of position p ends (ends[0]: after retry:)

    @classmethod
    def encode(cls, events: Sequence[EncodedEvent]) -> SseReplay:
        messages = [RETRY, *(sse_frame(position, event) for position, event in enumerate(events, start=1))]
        ends, end = [], 0
        for message in messages:
            end += len(message)
            ends.append(end)
        return cls(b"".join(messages), tuple(ends))

    @property
    def size(self) -> int:
        """Bytes it holds, roughly (its cache's bound counts this)."""
        return len(self.body) + 8 * len(self.ends)

    def after(self, position: int) -> list[bytes]:
        """``retry:`` and the messages after ``position``, as few chunks as that takes."""
        if position == 0:
            return [self.body]
        return [RETRY, self.messages_after(position)]

    def messages_after(self, position: int) -> bytes:
        """The messages after ``position``, without ``retry:``."""
        return self.body[self.ends[position]:]

    def frames(self, position: int) -> Iterator[bytes]:
        """The messages after ``position``, one by one (without ``retry:``)."""
        for start, end in zip(self.ends[position:], self.ends[position + 1:], strict=False):
            yield self.body[start:end]
