"""Prefer, Accept, Accept-Encoding and If-None-Match: what each means, and that none of them,
however long, costs a request more than a header of ordinary characters of the same length."""

from __future__ import annotations

import time

import pytest
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from app.api.negotiation import Wait
from app.api.negotiation import accepts_gzip
from app.api.negotiation import etag_matches
from app.api.negotiation import prefers_event_stream
from app.api.negotiation import requested_wait


@pytest.mark.parametrize(
    ("prefer", "seconds", "applied"),
    [("respond-async", 0.0, ("respond-async",)), ("wait=5", 5.0, ("wait=5",)), ('wait="7"', 7.0, ("wait=7",)),
     ("wait=99", 25.0, ("wait=25",)), ("WAIT = 3 ; x=y", 3.0, ("wait=3",)), ("wait=3, respond-async", 0.0,
     ("respond-async",)), ("wait=2, wait=9", 2.0, ("wait=2",)), ("wait=1.5", 20.0, ()), ("wait=-1", 20.0, ()),
     ("handling=lenient", 20.0, ()), ("", 20.0, ()), ("wait", 20.0, ()), ("w@it=3", 20.0, ())],
    ids=["async", "wait", "quoted", "capped", "spaces-case-params", "async-wins", "first-counts", "fraction",
         "negative", "other", "empty", "no-value", "not-a-token"],
)
def test_prefer_asks_for_a_wait_or_none(prefer, seconds, applied):
    assert requested_wait(prefer, 20.0, 25.0) == Wait(seconds, applied)


ACCEPTS = ["text/event-stream", "application/json", "*/*", "text/*", "text/event-stream, application/json",
           "application/json, text/event-stream", "text/event-stream;q=0.9, application/json;q=0.8",
           "application/json;q=0.5, text/*", "application/*;q=0.1, text/event-stream;q=0.2",
           "text/event-stream;q=0, */*", "text/html, */*;q=0.8", "text/event-stream;q=1.5", "text/event-stream;q=x",
           "TEXT/EVENT-STREAM", "application/json;q=0",
           "image/png", "", "text", "*/*;q=0.5, text/event-stream;q=0.5"]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_accept_chooses_as_werkzeugs_best_match_does(accept):
    expected = parse_accept_header(accept, MIMEAccept).best_match(["application/json", "text/event-stream"])
    assert prefers_event_stream(accept) == (expected == "text/event-stream")


def test_an_event_stream_range_with_parameters_is_the_stream_this_service_sends():
    # werkzeug matches a range with parameters only to an offer with the same ones; the stream
    # is sent as text/event-stream; charset=utf-8, so a client asking for that gets it.
    assert prefers_event_stream("text/event-stream;charset=utf-8, application/json")


@pytest.mark.parametrize(
    ("accept_encoding", "gzip"),
    [("gzip", True), ("gzip, deflate, br", True), ("deflate", False), ("*", True), ("GZIP;q=0.5", True),
     ("gzip;q=0", False), ("gzip;q=0, *", False), ("*;q=0", False), ("br, *;q=0.1", True), ("", False),
     ("x-gzip", True), ("gzip;q=2", False)],
)
def test_accept_encoding_takes_gzip_by_its_own_quality_or_stars(accept_encoding, gzip):
    assert accepts_gzip(accept_encoding) is gzip


@pytest.mark.parametrize(
    ("if_none_match", "matches"),
    [('"abc"', True), ('"x", "abc"', True), ('W/"abc"', True), ("*", True), ('"abd"', False), ("abc", False),
     ('"x",,  "abc"  ', True), ("", False)],
)
def test_if_none_match_names_the_etag_or_everything(if_none_match, matches):
    assert etag_matches(if_none_match, '"abc"') is matches


# Shapes that make backtracking or repeated scanning blow up: runs of spaces between tokens, of
# separators, of quotes and escapes. Each is 8,000 characters, as gunicorn lets a header line be.
HOSTILE_SHAPES = {
    "spaces": "a" + " " * 7998 + "x",
    "spaces-after-value": "a=b" + " " * 7996 + "x",
    "semicolons": "a/b" + ";" * 7997,
    "spaced-semicolons": "a/b" + "; " * 3998 + "x",
    "commas": "a," * 4000,
    "quotes": 'a="' + '\\"' * 3998 + "x",
    "equals": "a" + "=" * 7999,
    "tabs": "text/event-stream" + "\t" * 7982 + "x",
}
ORDINARY = "a" * 8000


def _cost(send, value: str, repeat: int = 5) -> float:
    """The least time of a few requests with the header set to ``value``."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        send(value)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("header", ["Prefer", "Accept", "Accept-Encoding", "If-None-Match"])
@pytest.mark.parametrize("shape", list(HOSTILE_SHAPES))
def test_no_header_costs_a_request_more_than_ordinary_characters_of_its_length(client, header, shape):
    run_id = client.get("/runs/lookup?scenarioId=cost&seed=1").get_json()["runId"]
    path = "/runs/lookup?scenarioId=cost&seed=1" if header == "Prefer" else f"/runs/{run_id}/events"

    # Accept is weighed only when it names the event stream at all: so it does here.
    prefix = "application/json, text/event-stream;q=0.5, " if header == "Accept" else ""

    def send(value: str) -> None:
        # Ten of them, as one request may carry: gunicorn joins repeated headers with commas.
        assert client.get(path, headers={header: prefix + ",".join([value] * 10)}).status_code in (200, 304)

    hostile, ordinary = _cost(send, HOSTILE_SHAPES[shape]), _cost(send, ORDINARY)
    # Linear parsing costs both about the same (a request is ~0.3 ms, a parse of 80 KB a few
    # tens of µs); the quadratic parsers these replaced took 0.1 to 6 s for the hostile shapes.
    assert hostile < 5 * ordinary, f"{header} {shape}: {hostile * 1000:.2f} ms vs {ordinary * 1000:.2f} ms"
