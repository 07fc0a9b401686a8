"""Reading done runs' transcripts back: decompressed within bounds, checked, and kept for a while."""

from __future__ import annotations

import hashlib
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from app.engine.base import Event
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.evidence.diff import RunFacts
from app.evidence.sse import SseReplay
from app.models import EncodedEvent
from app.models import RunRecord
from app.models import canonical_json

Kept = bytes | SseReplay | RunFacts
K = TypeVar("K", bytes, SseReplay, RunFacts)


class CorruptTranscript(Exception):
    """A stored transcript is not what its record says: it does not decompress within bounds,
    or its events are not the bytes its digest names."""


class TranscriptCache:
    """Done runs read back: the plain /events body of each, and its encoded representations
    (the SSE replay, the CSV, the ZIP pack), kept once made. A done run never changes, so each is
    made once per process and served as it is after that; least recently used out first, and
    bounded by the bytes held, so memory stays bounded whatever runs are read. One item larger
    than the whole bound is served but not kept.

    A body is checked against its record's digest when it is decompressed, so a record that
    a shared backend holds damaged (or that someone wrote there) is never served.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, bytes, str], tuple[Kept, int]] = OrderedDict()
        self._bytes = 0

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def body(self, record: RunRecord) -> bytes:
        """The plain /events body of ``record``.

        :raises CorruptTranscript: the stored transcript is not what the record says.
        """
        return self.representation(record, "json", lambda: _checked_body(record))

    def representation(self, record: RunRecord, name: str, encode: Callable[[], K]) -> K:
        """``record``'s representation ``name``, made by ``encode`` the first time it is asked for."""
        key = (record.run_id, record.events_digest, name)
        with self._lock:
            entry = self._kept.get(key)
            if entry is not None:
                self._kept.move_to_end(key)
                return entry[0]  # type: ignore[return-value]
        value = encode()  # outside the lock: two first readers may both make it; the bytes are the same
        size = len(value) if isinstance(value, bytes) else value.size
        if size > self.max_bytes:
            return value
        with self._lock:
            if key not in self._kept:
                self._kept[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._kept.popitem(last=False)
                self._bytes -= dropped
        return value

    def events_json(self, record: RunRecord) -> bytes:
        """The events' canonical JSON: the bytes eventsSha256 digests."""
        return record.events_json(self.body(record))

    def events(self, record: RunRecord) -> list[Event]:
        events: list[Event] = json.loads(self.events_json(record))
        return events

    def encoded_events(self, record: RunRecord) -> list[EncodedEvent]:
        """The events as they were recorded: type, and their data's canonical JSON."""
        return [(event["type"], canonical_json(event["data"])) for event in self.events(record)]


def _checked_body(record: RunRecord) -> bytes:
    """Decompress, never past the largest body a transcript may have, and check the digest."""
    limit = MAX_TRANSCRIPT_BYTES + 4096  # the events, and the runId and count around them
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        body = inflater.decompress(record.body_gzip, limit)
    except zlib.error as err:
        raise CorruptTranscript(f"its transcript does not decompress ({err})") from err
    if not inflater.eof or inflater.unconsumed_tail:
        raise CorruptTranscript(f"its transcript is incomplete or decompresses past {limit} bytes")
    if hashlib.sha256(record.events_json(body)).digest() != record.events_digest:
        raise CorruptTranscript("its events do not match its eventsSha256")
    return body
