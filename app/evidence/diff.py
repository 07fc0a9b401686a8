"""Comparing transcripts and their reports.

A comparison costs the size of the transcripts once per run, not once per request: each run's
``RunFacts`` (its token count, its last report, a 16-byte fingerprint of each event) is made once
and kept, and two runs' first difference is found by comparing their fingerprints (C's memcmp,
halving), or not at all when their eventsSha256 are equal. Two 20 MB transcripts took 1.8 s of
the process's CPU for every compare when they were parsed and encoded again each time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal

from app.engine.base import Event
from app.models import canonical_json

FINGERPRINT = 16  # bytes per event: blake2b's, far past what a crafted collision could reach

Number = int | float


@dataclass(frozen=True)
class MetricDelta:
    left: object
    right: object
    delta: Number | None  # right - left, when both are numbers


@dataclass(frozen=True)
class TranscriptDiff:
    identical: bool
    first_difference: int | None  # 1-based position of the first differing event
    left_tokens: int
    right_tokens: int
    metrics: dict[str, MetricDelta]


@dataclass(frozen=True)
class RunFacts:
    """What comparing a done run needs of its transcript, made once per run."""

    tokens: int
    report: dict[str, object]  # the last report's metrics, its series left out
    fingerprints: bytes  # FINGERPRINT bytes per event, in order

    @classmethod
    def of(cls, events: list[Event]) -> RunFacts:
        return cls(token_count(events), _report(events), b"".join(
            hashlib.blake2b(canonical_json(event), digest_size=FINGERPRINT).digest() for event in events))

    @property
    def size(self) -> int:
        """Bytes it holds, for the cache that keeps it."""
        return len(self.fingerprints) + 64 * (len(self.report) + 1)


def diff_facts(left: RunFacts, right: RunFacts, identical: bool | None) -> TranscriptDiff:
    """Where two runs' transcripts part, their token counts, and their reports side by side, from
    the runs' facts; ``identical`` when their digests already say so (``None``: not known)."""
    position = None if identical else first_fingerprint_difference(left.fingerprints, right.fingerprints)
    left_report, right_report = left.report, right.report
    return TranscriptDiff(
        identical=position is None,
        first_difference=position,
        left_tokens=left.tokens,
        right_tokens=right.tokens,
        metrics={
            name: MetricDelta(left_report.get(name), right_report.get(name),
                              _delta(left_report.get(name), right_report.get(name)))
            for name in [*left_report, *(name for name in right_report if name not in left_report)]
        },
    )


def first_fingerprint_difference(left: bytes, right: bytes) -> int | None:
    """The 1-based position of the first event whose fingerprints differ, or None: equal prefixes
    found by halving, each comparison a memcmp of views (nothing copied)."""
    shorter = min(len(left), len(right)) // FINGERPRINT
    one, other = memoryview(left), memoryview(right)
    if one[:shorter * FINGERPRINT] == other[:shorter * FINGERPRINT]:
        return None if len(left) == len(right) else shorter + 1
    equal, differing = 0, shorter  # the first ``equal`` events match; one of those before ``differing`` does not
    while differing - equal > 1:
        middle = (equal + differing) // 2
        if one[equal * FINGERPRINT:middle * FINGERPRINT] == other[equal * FINGERPRINT:middle * FINGERPRINT]:
            equal = middle
        else:
            differing = middle
    return equal + 1


def first_difference(left: list[Event], right: list[Event]) -> int | None:
    """The 1-based position where the transcripts' canonical bytes first differ, or None."""
    for position, (one, other) in enumerate(zip(left, right, strict=False), start=1):
        # Bytes, not ==: in Python 1 == 1.0 == True, in a transcript they differ.
        if canonical_json(one) != canonical_json(other):
            return position
    return None if len(left) == len(right) else min(len(left), len(right)) + 1


def token_count(events: list[Event]) -> int:
    return sum(event["type"] == "token" for event in events)


def _report(events: list[Event]) -> dict[str, object]:
    """The last report's metrics: its ``series`` are charts (the compare view draws both runs'), not metrics."""
    reports = [event["data"] for event in events if event["type"] == "report"]
    return {name: value for name, value in reports[-1].items() if name != "series"} if reports else {}


def _delta(left: object, right: object) -> Number | None:
    """right - left, for two numbers; ``None`` when either is not one, or the difference is no
    finite float (1e308 - -1e308 overflows): JSON has no Infinity."""
    if not (_is_number(left) and _is_number(right)):
        return None
    # Through Decimal so 63.99 - 55.99 is 8.0, not 8.000000000000007.
    difference = Decimal(repr(right)) - Decimal(repr(left))
    if isinstance(left, int) and isinstance(right, int):
        return int(difference)
    as_float = float(difference)
    return as_float if math.isfinite(as_float) else None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
