"""Reading done runs' transcripts back, without Flask: checked, bounded, cached."""

from __future__ import annotations

import dataclasses
import gzip

import pytest

from app.evidence.sse import SseReplay
from app.evidence.transcripts import CorruptTranscript
from app.evidence.transcripts import TranscriptCache
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunRecord

EVENTS = [("start", b'{"seed":1}'), ("token", '{"text":"é"}'.encode()), ("done", b"{}")]


def record(events=EVENTS) -> RunRecord:
    key = RunKey("s", 1, "h")
    return RunRecord.create(RunIdentity.of(key, key.run_id(1_795_694_400_000), "fake", "1"), events)


def test_a_record_reads_back_as_its_events_and_their_canonical_json():
    cache = TranscriptCache(max_bytes=100_000)
    assert cache.encoded_events(record()) == EVENTS
    assert cache.events_json(record()) == '[{"data":{"seed":1},"type":"start"},{"data":{"text":"é"},"type":"token"},' \
                                          '{"data":{},"type":"done"}]'.encode()
    assert cache.body(record()).startswith(b'{"runId":"run_s_1_1795694400000","events":[')


def test_a_body_ends_with_a_newline_and_one_recorded_without_it_still_reads_back():
    body = TranscriptCache(max_bytes=100_000).body(record())
    assert body.endswith(b',"count":3}\n')
    # Runs an earlier version kept (in Redis, across an upgrade) end without one: still whole.
    older = dataclasses.replace(record(), body_gzip=gzip.compress(body.removesuffix(b"\n"), mtime=0))
    assert TranscriptCache(max_bytes=100_000).encoded_events(older) == EVENTS


def test_a_transcript_that_does_not_match_its_digest_is_refused():
    damaged = dataclasses.replace(record(), body_gzip=gzip.compress(
        gzip.decompress(record().body_gzip).replace(b"seed", b"sied"), mtime=0))
    with pytest.raises(CorruptTranscript, match="do not match its eventsSha256"):
        TranscriptCache(max_bytes=100_000).body(damaged)


@pytest.mark.parametrize(
    "body_gzip",
    [b"not gzip at all", gzip.compress(b"[" + b" " * (40 * 1024 * 1024), mtime=0), gzip.compress(b"x")[:-6]],
    ids=["garbage", "bomb", "truncated"],
)
def test_a_transcript_that_does_not_decompress_within_bounds_is_refused(body_gzip):
    with pytest.raises(CorruptTranscript):
        TranscriptCache(max_bytes=100_000).body(dataclasses.replace(record(), body_gzip=body_gzip))


def test_the_cache_keeps_the_most_recently_read_bodies_within_its_bytes():
    first, second = record(), record(EVENTS[:1])
    cache = TranscriptCache(max_bytes=len(TranscriptCache(max_bytes=100_000).body(first)) + 1)
    kept = cache.body(first)
    assert cache.body(first) is kept
    cache.body(second)  # both do not fit: the least recently read goes
    assert cache.bytes_held == len(cache.body(second))
    again = cache.body(first)  # decompressed and checked again
    assert again == kept and again is not kept


def test_representations_are_made_once_and_stay_within_the_bytes():
    cache = TranscriptCache(max_bytes=100)
    made = []

    def encode(size):
        made.append(size)
        return b"x" * size

    first, second = record(), record(EVENTS[:1])
    assert cache.representation(first, "csv", lambda: encode(60)) == b"x" * 60
    assert cache.representation(first, "csv", lambda: encode(60)) == b"x" * 60 and made == [60]  # kept
    cache.representation(second, "csv", lambda: encode(50))  # 110 bytes: the least recently used goes
    assert cache.bytes_held == 50
    cache.representation(first, "csv", lambda: encode(60))
    assert made == [60, 50, 60] and cache.bytes_held == 60
    assert cache.representation(second, "zip", lambda: encode(101)) == b"x" * 101  # too large: served, not kept
    assert cache.bytes_held == 60


def test_an_sse_replay_counts_its_bytes_against_the_bound():
    cache = TranscriptCache(max_bytes=10_000)
    replay = cache.representation(record(), "sse", lambda: SseReplay.encode(EVENTS))
    assert cache.bytes_held == replay.size > len(replay.body)
