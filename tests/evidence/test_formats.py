"""The pure evidence functions: SSE pacing, CSV neutralising, transcript diffs."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from app.evidence.csv_export import neutralised
from app.evidence.diff import RunFacts
from app.evidence.diff import diff_facts
from app.evidence.diff import first_difference
from app.evidence.sse import RETRY
from app.evidence.sse import SseReplay
from app.evidence.sse import paced
from app.evidence.sse import sse_frame
from app.models import canonical_json


def events(*texts):
    return [{"type": "token", "data": {"text": text, "tokenIndex": n}} for n, text in enumerate(texts, 1)]


def encoded(*texts):
    return [(event["type"], canonical_json(event["data"])) for event in events(*texts)]


def test_pacing_waits_between_events_not_before_the_first():
    waits = []
    messages = list(paced(SseReplay.encode(encoded("a", "b", "c")).frames(0), pace_ms=50, sleep=waits.append))
    assert len(messages) == 3 and waits == [0.05, 0.05]
    assert messages[0].startswith(b"id: 1\nevent: token\n")


def test_resumed_pacing_starts_at_once():
    waits = []
    messages = list(paced(SseReplay.encode(encoded("a", "b", "c")).frames(2), pace_ms=50, sleep=waits.append))
    assert waits == [] and messages[0].startswith(b"id: 3\n")


def test_no_pace_never_sleeps():
    list(paced(SseReplay.encode(encoded("a", "b")).frames(0), pace_ms=0, sleep=lambda seconds: pytest.fail("slept")))


@given(st.lists(st.text(max_size=20), max_size=12), st.data())
def test_a_replay_from_any_position_is_the_messages_after_it(texts, data):
    events = encoded(*texts)
    replay = SseReplay.encode(events)
    position = data.draw(st.integers(0, len(events)))
    expected = RETRY + b"".join(sse_frame(n, event) for n, event in enumerate(events, 1) if n > position)
    assert b"".join(replay.after(position)) == expected
    assert b"".join(replay.frames(position)) == replay.messages_after(position) == expected[len(RETRY):]


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@A1", "'@A1"), ("\tx", "'\tx"), ("\rx", "'\rx"),
     ("  =1", "'  =1"), ("a=1", "a=1"), ("", ""), (" on", " on"), ("{\"a\":1}", "{\"a\":1}"),
     ("|cmd", "'|cmd"), ("%0A", "'%0A"), ("\u00a0=1+1", "'\u00a0=1+1"), ("\n=1", "'\n=1"),
     ("\u3000@x", "'\u3000@x"), ("\u200b=1", "'\u200b=1"), ("\ufeff+1", "'\ufeff+1"), ("\uff1d1+1", "'\uff1d1+1"),
     ("\u2212 1", "'\u2212 1"), ("\ufe63 1", "'\ufe63 1"), ("\u2028\u2029-1", "'\u2028\u2029-1"),
     ("\u00a0 on", "\u00a0 on"), ("\u3000", "\u3000")],
)
def test_neutralised(cell, expected):
    assert neutralised(cell) == expected


def spreadsheet_reads_formula(cell: str) -> bool:
    """A model of the most eager spreadsheet: skip whatever it might skip, fold look-alikes."""
    if cell.startswith("'"):
        return False  # a quoted cell is text
    shown = unicodedata.normalize("NFKC", cell)
    stripped = "".join(ch for ch in shown if unicodedata.category(ch) not in {"Zs", "Zl", "Zp", "Cc", "Cf"})
    return stripped[:1] in set("=+-@|%") or cell[:1] in ("\t", "\r") or cell.lstrip()[:1] == "\u2212"


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from("=+-@|%abc1 \t\r\n\u00a0\u3000\u200b\ufeff\uff1d\uff0b\uff0d\uff20\u2212"
                                        "\ufe62\ufe63\ufe66\ufe6b\u2028\u2029\u0085"), max_size=6))
def test_no_cell_is_left_that_a_spreadsheet_reads_as_a_formula(cell):
    assert not spreadsheet_reads_formula(neutralised(cell))


def test_first_difference_is_by_bytes_and_length():
    assert first_difference(events("a", "b"), events("a", "b")) is None
    assert first_difference(events("a", "b"), events("a", "c")) == 2
    assert first_difference(events("a"), events("a", "b")) == 2
    one = [{"type": "report", "data": {"x": 1}}]
    assert first_difference(one, [{"type": "report", "data": {"x": 1.0}}]) == 1  # 1 == 1.0 in Python, not in JSON


def test_report_deltas_are_exact_and_only_for_numbers():
    left = [{"type": "report", "data": {"price": 55.99, "n": 3, "flag": True, "label": "a", "only_left": 1}}]
    right = [{"type": "report", "data": {"price": 63.99, "n": 5, "flag": False, "label": "b", "only_right": 2.5}}]
    metrics = diff_facts(RunFacts.of(left), RunFacts.of(right), identical=None).metrics
    assert metrics["price"].delta == 8.0 and isinstance(metrics["n"].delta, int) and metrics["n"].delta == 2
    assert metrics["flag"].delta is None and metrics["label"].delta is None
    assert (metrics["only_left"].right, metrics["only_left"].delta) == (None, None)
    assert list(metrics) == ["price", "n", "flag", "label", "only_left", "only_right"]
