"""Reading done runs' transcripts back, without Flask: checked, bounded, cached."""

from __future__ import annotations

import dataclasses
import gzip

import pytest

from app.evidence.sse import SseReplay
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunRecord
from app.transcripts import CorruptTranscript
from app.transcripts import EncodedReplays
from app.transcripts import TranscriptCache

EVENTS = [("start", b'{"seed":1}'), ("token", '{"text":"é"}'.encode()), ("done", b"{}")]


def record(events=EVENTS) -> RunRecord:
    key = RunKey("s", 1, "h")
    return RunRecord.create(RunIdentity.of(key, key.run_id(1_795_694_400_000), "fake", "1"), events)


def test_a_record_reads_back_as_its_events_and_their_canonical_json():
    cache = TranscriptCache(capacity=2)
    assert cache.encoded_events(record()) == EVENTS
    assert cache.events_json(record()) == '[{"data":{"seed":1},"type":"start"},{"data":{"text":"é"},"type":"token"},' \
                                          '{"data":{},"type":"done"}]'.encode()
    assert cache.body(record()).startswith(b'{"runId":"run_s_1_1795694400000","events":[')


def test_a_transcript_that_does_not_match_its_digest_is_refused():
    damaged = dataclasses.replace(record(), body_gzip=gzip.compress(
        gzip.decompress(record().body_gzip).replace(b"seed", b"sied"), mtime=0))
    with pytest.raises(CorruptTranscript, match="do not match its eventsSha256"):
        TranscriptCache(capacity=2).body(damaged)


@pytest.mark.parametrize(
    "body_gzip",
    [b"not gzip at all", gzip.compress(b"[" + b" " * (40 * 1024 * 1024), mtime=0), gzip.compress(b"x")[:-6]],
    ids=["garbage", "bomb", "truncated"],
)
def test_a_transcript_that_does_not_decompress_within_bounds_is_refused(body_gzip):
    with pytest.raises(CorruptTranscript):
        TranscriptCache(capacity=2).body(dataclasses.replace(record(), body_gzip=body_gzip))


def test_the_cache_keeps_the_most_recently_read_bodies_only():
    cache = TranscriptCache(capacity=1)
    first, second = record(), record(EVENTS[:1])
    assert cache.body(first) is cache.body(first)  # kept
    cache.body(second)
    assert cache.body(first) is not cache.body(second)


def test_encoded_replays_are_made_once_and_stay_within_their_bytes():
    replays = EncodedReplays(max_bytes=100)
    made = []

    def encode(size):
        made.append(size)
        return b"x" * size

    first, second = record(), record(EVENTS[:1])
    assert replays.get(first, "csv", lambda: encode(60)) == b"x" * 60
    assert replays.get(first, "csv", lambda: encode(60)) == b"x" * 60 and made == [60]  # kept, not made again
    replays.get(second, "csv", lambda: encode(50))  # 110 bytes: the least recently used goes
    assert replays.bytes_held == 50
    replays.get(first, "csv", lambda: encode(60))
    assert made == [60, 50, 60] and replays.bytes_held == 60
    assert replays.get(second, "zip", lambda: encode(101)) == b"x" * 101  # larger than the bound: served, not kept
    assert replays.bytes_held == 60


def test_an_sse_replay_counts_its_bytes_against_the_bound():
    replays = EncodedReplays(max_bytes=10_000)
    replay = replays.get(record(), "sse", lambda: SseReplay.encode(EVENTS))
    assert replays.bytes_held == replay.size > len(replay.body)
