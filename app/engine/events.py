"""What an event must be for the service to record it, whoever made it (section 2)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from app.models import EncodedEvent
from app.models import canonical_json
from app.text import printable

# An event type becomes an SSE "event:" line: no spaces, no newlines.
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# The message that ends a failed run's stream (section 10): an engine's event of this type would
# make a done run look failed to every client.
RESERVED_TYPE = "error"
# The largest transcript recorded, and so the most that reading one back may decompress to.
MAX_TRANSCRIPT_BYTES = 32 * 1024 * 1024


class MalformedEvent(ValueError):
    """An engine's event is not one the service records; the message says why."""


def encoded_event(event: object) -> EncodedEvent:
    """A well-formed event, exactly ``{"type": name, "data": object}``, as (type, data's canonical JSON).

    :raises MalformedEvent: it is not one.
    """
    if not isinstance(event, dict) or event.keys() != {"type", "data"}:
        raise MalformedEvent('it is not an object of exactly "type" and "data"')
    event_type = event["type"]
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        raise MalformedEvent("its type is not a name (a letter, then up to 63 of A-Z a-z 0-9 . _ -)")
    if event_type == RESERVED_TYPE:
        raise MalformedEvent("its type is error, which is the service's own (the end of a failed run)")
    if not isinstance(event["data"], dict):
        raise MalformedEvent("its data is not a JSON object")
    try:
        return event_type, canonical_json(event["data"])
    except (TypeError, ValueError) as err:
        raise MalformedEvent(f"its data is not JSON ({err})") from None
    except RecursionError:
        raise MalformedEvent("its data is nested too deeply") from None


def encoded_size(event: EncodedEvent) -> int:
    """Bytes an event takes in the transcript (its data, its type, and the JSON around them)."""
    return len(event[1]) + len(event[0]) + 20


def event_from_line(line: bytes) -> EncodedEvent:
    """One JSON Lines line as an event (process and HTTP engines write them).

    :raises MalformedEvent: it is not one; the message says why.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEvent("it is not UTF-8") from None
    if not text.strip():
        raise MalformedEvent("it is empty")
    try:
        event = json.loads(text)
    except RecursionError:
        raise MalformedEvent("it is nested too deeply") from None
    except ValueError as err:  # json's, and int()'s for a number of too many digits
        raise MalformedEvent(f"it is not JSON ({printable(str(err), 80)})") from None
    return encoded_event(event)


class JsonLines:
    """Bytes as they arrive, cut into lines at ``\\n`` only (JSON strings may hold U+2028, which
    other line splitters also cut at); a long line is searched for its end once."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        searched = len(self._pending)
        self._pending += chunk
        end = self._pending.find(b"\n", searched)
        while end >= 0:
            line = bytes(self._pending[:end])
            del self._pending[:end + 1]
            yield line
            end = self._pending.find(b"\n")

    def rest(self) -> bytes | None:
        """What followed the last newline, if anything: a last line written without one."""
        rest, self._pending = bytes(self._pending), bytearray()
        return rest or None
