"""RFC 7240 ``Prefer``: how long a client would rather wait for a run, or not wait at all."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import request

# A preference: a token, optionally "=" a token or quoted string, then ";"-parameters we ignore.
_PREFERENCE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("[^"]*"|[^,;\s]*))?\s*(?:;[^,]*)?')


@dataclass(frozen=True)
class Wait:
    """How long to wait for a run that is not done, and the preferences that decided it."""

    seconds: float
    applied: tuple[str, ...]  # for Preference-Applied


def requested_wait(default_s: float, maximum_s: float) -> Wait:
    """The wait the request prefers, or ``default_s``.

    ``respond-async`` means no wait; ``wait=N`` (delta-seconds) means N seconds, up to
    ``maximum_s``; anything else in ``Prefer`` is ignored, as RFC 7240 says a server may.
    ``respond-async`` wins over a ``wait`` given with it.
    """
    preferences: dict[str, str] = {}
    for header in request.headers.getlist("Prefer"):
        for part in header.split(","):
            matched = _PREFERENCE.fullmatch(part)
            if matched is not None:
                name, value = matched.group(1).lower(), (matched.group(2) or "").strip('"')
                preferences.setdefault(name, value)  # the first of a repeated preference counts
    if "respond-async" in preferences:
        return Wait(0.0, ("respond-async",))
    value = preferences.get("wait", "")
    if re.fullmatch(r"[0-9]{1,9}", value):
        seconds = min(float(value), maximum_s)
        return Wait(seconds, (f"wait={seconds:g}",))
    return Wait(default_s, ())
