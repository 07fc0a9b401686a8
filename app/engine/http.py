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

import httpx
from httpx_sse import EventSource
from httpx_sse import SSEError

from app.engine.base import Engine
from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.base import EngineUnavailable
from app.engine.base import Identity
from app.engine.base import StderrSink
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.engine.events import JsonLines
from app.engine.events import MalformedEvent
from app.engine.events import encoded_event
from app.engine.events import event_from_line
from app.engine.remote import Description
from app.engine.wire import MESSAGE
from app.engine.wire import TooLarge
from app.engine.wire import Wire
from app.engine.wire import engine_message
from app.engine.wire import read_some
from app.engine.wire import wire_problem
from app.models import EncodedEvent
from app.text import printable

DESCRIBE_TIMEOUT_S = 5.0


class HttpEngine(Engine):
    """A remote engine spoken to over HTTP; its identity is what it describes, codeDigest included."""

    kind = "http"
    remote = True

    def __init__(self, spec: str, token: str | None, describe_every_s: float, read_timeout_s: float) -> None:
        super().__init__(spec)
        self.base = spec.rstrip("/")
        self.wire = Wire({"Authorization": f"Bearer {token}"} if token else {}, read_timeout_s)
        self.description = Description(self._describe, describe_every_s, spec)

    def identity(self) -> Identity:
        return self.description.current()

    def ready(self, fresh: bool = False) -> Identity:
        return self.description.ready(fresh)

    def close(self) -> None:
        self.wire.close()

    def available(self) -> bool:
        return self.description.answering

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


class _HttpRun(EngineRun):
    def __init__(self, engine: HttpEngine, scenario_id: str, seed: int) -> None:
        self._engine = engine
        self._request = {"scenarioId": scenario_id, "seed": seed}
        self._connection = engine.wire.for_run()
        self._stopped = False

    def __iter__(self) -> Iterator[EncodedEvent]:
        engine = self._engine
        try:
            with self._connection.client.stream("POST", f"{engine.base}/run", json=self._request,
                                     headers={"Accept": "text/event-stream, application/x-ndjson"}) as response:
                if response.status_code != 200:
                    raise EngineError(f"POST /run answered {response.status_code}:"
                                      f" {engine_message(read_some(response))}")
                kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
                if kind == "text/event-stream":
                    yield from _server_sent_events(response)
                elif kind == "application/x-ndjson":
                    yield from _json_lines(response)
                else:
                    raise EngineError(f"POST /run answered {printable(kind or 'no Content-Type', 80)!r}, not"
                                      f" text/event-stream or application/x-ndjson")
        except TooLarge:
            raise EngineError(f"it sent more than {MAX_TRANSCRIPT_BYTES} bytes") from None
        except (httpx.HTTPError, OSError) as err:
            if self._stopped:
                raise EngineError("it was stopped") from None
            if isinstance(err, httpx.ConnectError):
                engine.description.trouble(wire_problem(err))
            raise EngineError(wire_problem(err)) from None

    def cancel(self) -> None:
        """Shut the connection down: the engine thread's read ends at once, and the engine sees
        its client gone."""
        self._stopped = True
        self._connection.cancel()

    def end(self) -> None:
        self._connection.end()


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
