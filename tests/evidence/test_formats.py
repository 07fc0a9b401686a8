"""The pure evidence functions: SSE pacing, CSV neutralising, transcript diffs."""

from __future__ import annotations

import pytest

from app.evidence.csv_export import neutralised
from app.evidence.diff import diff_transcripts
from app.evidence.diff import first_difference
from app.evidence.sse import sse_messages


def events(*texts):
    return [{"type": "token", "data": {"text": text, "tokenIndex": n}} for n, text in enumerate(texts, 1)]


def test_pacing_waits_between_events_not_before_the_first():
    waits = []
    messages = list(sse_messages(events("a", "b", "c"), after=0, pace_ms=50, sleep=waits.append))
    assert len(messages) == 4 and waits == [0.05, 0.05]


def test_resumed_pacing_starts_at_once():
    waits = []
    list(sse_messages(events("a", "b", "c"), after=2, pace_ms=50, sleep=waits.append))
    assert waits == []


def test_no_pace_never_sleeps():
    list(sse_messages(events("a", "b"), sleep=lambda seconds: pytest.fail("slept")))


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\tx", "'\tx"), ("\rx", "'\rx"),
     ("  =1", "'  =1"), ("a=1", "a=1"), ("", ""), (" on", " on"), ("{\"a\":1}", "{\"a\":1}")],
)
def test_neutralised(cell, expected):
    assert neutralised(cell) == expected


def test_first_difference_is_by_bytes_and_length():
    assert first_difference(events("a", "b"), events("a", "b")) is None
    assert first_difference(events("a", "b"), events("a", "c")) == 2
    assert first_difference(events("a"), events("a", "b")) == 2
    one = [{"type": "report", "data": {"x": 1}}]
    assert first_difference(one, [{"type": "report", "data": {"x": 1.0}}]) == 1  # 1 == 1.0 in Python, not in JSON


def test_report_deltas_are_exact_and_only_for_numbers():
    left = [{"type": "report", "data": {"price": 55.99, "n": 3, "flag": True, "label": "a", "only_left": 1}}]
    right = [{"type": "report", "data": {"price": 63.99, "n": 5, "flag": False, "label": "b", "only_right": 2.5}}]
    metrics = diff_transcripts(left, right).metrics
    assert metrics["price"].delta == 8.0 and isinstance(metrics["n"].delta, int) and metrics["n"].delta == 2
    assert metrics["flag"].delta is None and metrics["label"].delta is None
    assert (metrics["only_left"].right, metrics["only_left"].delta) == (None, None)
    assert list(metrics) == ["price", "n", "flag", "label", "only_left", "only_right"]
