"""HTTP engines (``http://...``, ``https://...``): a service that runs scenarios.

``GET <base>/describe`` answers ``{"name", "version"}`` and perhaps ``"codeDigest"``; ``POST
<base>/run`` with ``{"scenarioId", "seed"}`` answers ``text/event-stream`` (each message's event
the type, its data the data) or ``application/x-ndjson`` (one event a line), each event as it is
made; the end of the answer is the end of the run.

The wire is app/engine/wire.py's (httpx and httpx-sse).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import EventSource
from httpx_sse import SSEError

from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.base import EngineUnavailable
from app.engine.base import Identity
from app.engine.base import StderrSink
from app.engine.events import JsonLines
from app.engine.events import MalformedEvent
from app.engine.events import encoded_event
from app.engine.events import event_from_line
from app.engine.remote import RemoteEngine
from app.engine.remote import RemoteRun
from app.engine.wire import MESSAGE
from app.engine.wire import engine_message
from app.engine.wire import wire_problem
from app.models import EncodedEvent
from app.text import printable

DESCRIBE_TIMEOUT_S = 5.0


class HttpEngine(RemoteEngine):
    """A remote engine spoken to over HTTP; its identity is what it describes, codeDigest included."""

    kind = "http"

    def __init__(self, spec: str, token: str | None, describe_every_s: float, read_timeout_s: float) -> None:
        super().__init__(spec, spec.rstrip("/"), token, describe_every_s, read_timeout_s)

    def run(self, scenario_id: str, seed: int, on_stderr: StderrSink | None = None) -> EngineRun:
        return _HttpRun(self, scenario_id, seed)

    def _describe(self) -> Identity:
        try:
            with self.wire.for_description(DESCRIBE_TIMEOUT_S) as describing:
                response = describing.get(f"{self.base}/describe", timeout=DESCRIBE_TIMEOUT_S)
                body = response.read()
        except (httpx.HTTPError, OSError) as err:
            raise EngineUnavailable(wire_problem(err)) from None
        if response.status_code != 200:
            raise EngineUnavailable(f"GET /describe answered {response.status_code}: {engine_message(body)}")
        try:
            described = json.loads(body)
        except (ValueError, RecursionError):
            described = None
        if not isinstance(described, dict) or not all(
            isinstance(described.get(field), str) and 0 < len(described[field]) <= 128 for field in ("name", "version")
        ) or not isinstance(described.get("codeDigest", ""), str):
            raise EngineUnavailable('GET /describe did not answer {"name", "version"} (strings of 1 to 128 characters)')
        digest = printable(described.get("codeDigest", ""), 256)
        return Identity(printable(described["name"], 128), printable(described["version"], 128), f"remote:{digest}")


class _HttpRun(RemoteRun):
    path = "/run"
    accept = "text/event-stream, application/x-ndjson"

    def __init__(self, engine: HttpEngine, scenario_id: str, seed: int) -> None:
        super().__init__(engine)
        self._request = {"scenarioId": scenario_id, "seed": seed}

    def request(self) -> dict[str, Any]:
        return self._request

    def events(self, response: httpx.Response, kind: str) -> Iterator[EncodedEvent]:
        if kind == "text/event-stream":
            return _server_sent_events(response)
        if kind == "application/x-ndjson":
            return _json_lines(response)
        raise EngineError(f"POST /run answered {printable(kind or 'no Content-Type', 80)!r}, not"
                          f" text/event-stream or application/x-ndjson")


def _server_sent_events(response: httpx.Response) -> Iterator[EncodedEvent]:
    count = 0
    try:
        for message in EventSource(response).iter_sse():
            count += 1
            try:
                data = json.loads(message.data)
            except RecursionError:
                raise EngineError(f"message {count} is not an event: its data is nested too deeply") from None
            except ValueError:
                raise EngineError(f"message {count} is not an event: its data is not JSON") from None
            try:
                yield encoded_event({"type": message.event, "data": data})
            except MalformedEvent as malformed:
                raise EngineError(f"message {count} is not an event: {malformed}") from None
    except SSEError as err:
        raise EngineError(printable(str(err), MESSAGE)) from None
    if count == 0:
        raise EngineError("it sent no events")


def _json_lines(response: httpx.Response) -> Iterator[EncodedEvent]:
    lines, number = JsonLines(), 0
    for chunk in response.iter_bytes():
        for line in lines.feed(chunk):
            number += 1
            yield _line_event(line, number)
    last = lines.rest()
    if last is not None:
        number += 1
        yield _line_event(last, number)
    if number == 0:
        raise EngineError("it sent no events")


def _line_event(line: bytes, number: int) -> EncodedEvent:
    try:
        return event_from_line(line)
    except MalformedEvent as malformed:
        raise EngineError(f"line {number} of its answer is not an event: {malformed}") from None
