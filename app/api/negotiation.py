"""The request headers that choose an answer: ``Prefer`` (RFC 7240), ``Accept``,
``Accept-Encoding`` and ``If-None-Match``.

Each is read in time linear in its length, and only its first ``MAX_ITEMS`` items are looked at,
so that no header, however long or repeated (gunicorn joins repeats with commas), costs a
request more than a few microseconds. That rules out the usual tools: a backtracking regular
expression over a whole value (``\\s*token\\s*(=...)?\\s*`` is quadratic in a run of spaces:
0.62 s for 8,000 of them), and werkzeug's ``MIMEAccept``, whose specificity split is quadratic
in spaces too (53 ms for 8,000, 1.6 s for ten such headers). So these parse by ``str.split`` and
``str.partition``, and match tokens with expressions that cannot backtrack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# A client with a real need sends a handful of items; past this many the rest are ignored (as
# RFC 7240 lets a server ignore any preference, and as a server may read a list only so far).
MAX_ITEMS = 32
EVENT_STREAM = "text/event-stream"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch
_DELTA_SECONDS = re.compile(r"[0-9]{1,9}").fullmatch
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)").fullmatch
_WHITESPACE = " \t"


@dataclass(frozen=True)
class Wait:
    """How long to wait for a run that is not done, and the preferences that decided it."""

    seconds: float
    applied: tuple[str, ...]  # for Preference-Applied


def requested_wait(prefer: str, default_s: float, maximum_s: float) -> Wait:
    """The wait a ``Prefer`` header asks for, or ``default_s``.

    ``respond-async`` means no wait; ``wait=N`` (delta-seconds) means N seconds, up to
    ``maximum_s``; anything else is ignored, as RFC 7240 says a server may. ``respond-async``
    wins over a ``wait`` given with it; the first of a repeated preference counts.
    """
    preferences: dict[str, str] = {}
    for item in _items(prefer):
        preference = item.partition(";")[0]  # its parameters: none that this service acts on
        name, _, value = preference.partition("=")
        name = name.strip(_WHITESPACE)
        if _TOKEN(name):
            preferences.setdefault(name.lower(), _unquoted(value.strip(_WHITESPACE)))
    if "respond-async" in preferences:
        return Wait(0.0, ("respond-async",))
    value = preferences.get("wait", "")
    if _DELTA_SECONDS(value):
        seconds = min(float(value), maximum_s)
        return Wait(seconds, (f"wait={seconds:g}",))
    return Wait(default_s, ())


def prefers_event_stream(accept: str) -> bool:
    """Whether ``Accept`` ranks Server-Sent Events above JSON (JSON on a tie, as it comes first).

    A media range's rank is its quality, then how specific it is (``*/*`` < ``text/*`` <
    ``text/event-stream`` < the same with parameters): the best-ranked range that matches each
    type decides, as werkzeug's ``best_match`` decides.
    """
    json_rank = event_stream_rank = (0.0, -1)
    for item in _items(accept):
        media_range, *parameters = item.split(";")
        main, slash, sub = media_range.strip(_WHITESPACE).lower().partition("/")
        quality = _quality(parameters)
        if not slash or quality is None or quality <= 0:
            continue
        extended = any(name.partition("=")[0].strip(_WHITESPACE).lower() != "q" for name in parameters[:MAX_ITEMS])
        rank = (quality, (main != "*") + (sub != "*") + extended)
        if _range_matches(main, sub, "application", "json"):
            json_rank = max(json_rank, rank)
        if _range_matches(main, sub, "text", "event-stream"):
            event_stream_rank = max(event_stream_rank, rank)
    return event_stream_rank > json_rank


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` takes gzip: its own item's quality if it has one, else ``*``'s
    (RFC 9110 12.5.3)."""
    gzip_quality: float | None = None
    any_quality: float | None = None
    for item in _items(accept_encoding):
        coding, *parameters = item.split(";")
        coding = coding.strip(_WHITESPACE).lower()
        quality = _quality(parameters)
        if quality is None:
            continue
        if coding in ("gzip", "x-gzip") and gzip_quality is None:
            gzip_quality = quality
        elif coding == "*" and any_quality is None:
            any_quality = quality
    if gzip_quality is not None:
        return gzip_quality > 0
    return any_quality is not None and any_quality > 0


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether ``If-None-Match`` names the strong ``etag`` (quoted, as sent) or is ``*``.

    The weak comparison RFC 9110 asks of If-None-Match: ``W/"x"`` matches ``"x"``.
    """
    for item in _items(if_none_match):
        tag = item.strip(_WHITESPACE)
        if tag == "*" or tag == etag or (tag[:2] in ("W/", "w/") and tag[2:] == etag):
            return True
    return False


def _items(value: str) -> Iterator[str]:
    """The first ``MAX_ITEMS`` comma-separated items of a header value (one split, bounded)."""
    parts = value.split(",", MAX_ITEMS)
    yield from parts[:MAX_ITEMS]


def _quality(parameters: list[str]) -> float | None:
    """The ``q`` among an item's parameters (1 without one), or ``None`` when it is malformed."""
    for parameter in parameters[:MAX_ITEMS]:
        name, _, value = parameter.partition("=")
        if name.strip(_WHITESPACE).lower() == "q":
            value = value.strip(_WHITESPACE)
            return float(value) if _QVALUE(value) else None
    return 1.0


def _range_matches(main: str, sub: str, wanted_main: str, wanted_sub: str) -> bool:
    if main == "*":
        return sub == "*"
    return main == wanted_main and sub in ("*", wanted_sub)


def _unquoted(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value
