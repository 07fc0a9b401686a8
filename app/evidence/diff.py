"""Comparing transcripts and their reports."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from app.engine.base import Event
from app.models import canonical_json

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


def diff_transcripts(left: list[Event], right: list[Event]) -> TranscriptDiff:
    """Where two transcripts part, their token counts, and their reports side by side."""
    position = first_difference(left, right)
    left_report, right_report = _report(left), _report(right)
    return TranscriptDiff(
        identical=position is None,
        first_difference=position,
        left_tokens=token_count(left),
        right_tokens=token_count(right),
        metrics={
            name: MetricDelta(left_report.get(name), right_report.get(name),
                              _delta(left_report.get(name), right_report.get(name)))
            for name in [*left_report, *(name for name in right_report if name not in left_report)]
        },
    )


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
    if not (_is_number(left) and _is_number(right)):
        return None
    # Through Decimal so 63.99 - 55.99 is 8.0, not 8.000000000000007.
    difference = Decimal(repr(right)) - Decimal(repr(left))
    return int(difference) if isinstance(left, int) and isinstance(right, int) else float(difference)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
