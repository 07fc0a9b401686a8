"""HTTP engines (``http://...``, ``https://...``): a service that runs scenarios.

``GET <base>/describe`` answers ``{"name", "version"}`` and perhaps ``"codeDigest"``; ``POST
<base>/run`` with ``{"scenarioId", "seed"}`` answers ``text/event-stream`` (each message's event
the type, its data the data) or ``application/x-ndjson`` (one event a line), each event as it is
made; the end of the answer is the end of the run.

The wire is httpx's, and Server-Sent Events are httpx-sse's: a client library and an SSE parser
that other people keep, rather than a parser of our own. Every answer's bytes are counted by a
transport of ours (the transcript's bound) before httpx decodes them, and a run can be stopped
from another thread by shutting its connection down.
"""

from __future__ import annotations

import _socket
import contextlib
import json
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import EventSource
from httpx_sse import SSEError

from app.concurrency import native_lock
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
from app.models import EncodedEvent
from app.text import printable

DESCRIBE_TIMEOUT_S = 5.0
MAX_ERROR_BODY = 4096  # of a refusal's body, read for its message
MESSAGE = 200  # characters of the engine's own message in a failure's


class HttpEngine(Engine):
    """A remote engine spoken to over HTTP; its identity is what it describes, codeDigest included."""

    kind = "http"
    remote = True

    def __init__(self, spec: str, token: str | None, describe_every_s: float, read_timeout_s: float) -> None:
        super().__init__(spec)
        self.base = spec.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._read_timeout_s = read_timeout_s
        self._ssl = ssl_context()
        self.description = Description(self._describe, describe_every_s, spec)

    def identity(self) -> Identity:
        return self.description.current()

    def ready(self, fresh: bool = False) -> Identity:
        return self.description.ready(fresh)

    def available(self) -> bool:
        return self.description.answering

    def run(self, scenario_id: str, seed: int, on_stderr: StderrSink | None = None) -> EngineRun:
        return _HttpRun(self, scenario_id, seed)

    def client(self, transport: CountingTransport, read_timeout_s: float | None = None) -> httpx.Client:
        """A client of the engine for one run or one description (never shared between threads:
        under gevent each thread has its own hub, and a pool's locks must not cross them)."""
        timeout = httpx.Timeout(10.0, read=read_timeout_s or self._read_timeout_s)
        return httpx.Client(transport=transport, headers=self._headers, timeout=timeout)

    def transport(self) -> CountingTransport:
        return CountingTransport(self._ssl)

    def _describe(self) -> Identity:
        try:
            with self.client(self.transport(), DESCRIBE_TIMEOUT_S) as client:
                response = client.get(f"{self.base}/describe", timeout=DESCRIBE_TIMEOUT_S)
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
        self._transport = engine.transport()
        self._client = engine.client(self._transport)
        self._stopped = False

    def __iter__(self) -> Iterator[EncodedEvent]:
        engine = self._engine
        try:
            with self._client.stream("POST", f"{engine.base}/run", json=self._request,
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
        self._transport.shutdown()

    def end(self) -> None:
        self._transport.closing()
        self._client.close()


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


class TooLarge(Exception):
    """An answer past the transcript's bound."""


class CountingTransport(httpx.HTTPTransport):
    """httpx's transport, counting each answer's bytes as they arrive (past MAX_TRANSCRIPT_BYTES
    the answer fails: a server may send a line, or an SSE message, that never ends), and
    remembering its connection so that another thread can shut it down."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(verify=context, retries=0)
        self._lock = native_lock()
        self._sockets: list[socket.socket] = []
        self._shut = False
        self._closing = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with self._lock:
                self._sockets.append(sock)
                if self._shut:
                    _shutdown(sock)
        response.stream = _CountedStream(response.stream)
        return response

    def shutdown(self) -> None:
        """End every connection's reads and writes now (from any thread)."""
        with self._lock:
            self._shut = True
            if not self._closing:
                for sock in self._sockets:
                    _shutdown(sock)

    def closing(self) -> None:
        """The client is about to close its sockets: a later shutdown must not touch their numbers."""
        with self._lock:
            self._closing = True


class _CountedStream(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._seen = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self._seen += len(chunk)
            if self._seen > MAX_TRANSCRIPT_BYTES:
                raise TooLarge()
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _shutdown(sock: socket.socket) -> None:
    """shutdown(2) of the socket's descriptor, by the C socket module: under gevent the socket is a
    greenlet socket of the engine thread's hub, whose own ``shutdown`` would reach into that hub
    from this thread. A socket closed already (its number -1) is left alone."""
    fd = sock.fileno()
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        raw = _socket.socket(sock.family, sock.type, sock.proto, fileno=fd)
        try:
            raw.shutdown(socket.SHUT_RDWR)
        finally:
            raw.detach()  # the descriptor is the connection's, not this object's


def ssl_context() -> ssl.SSLContext:
    """One context for every client of an engine: making one reads the CA bundle (milliseconds)."""
    return httpx.create_ssl_context()


def read_some(response: httpx.Response) -> bytes:
    """The start of a refusal's body (its message), not all of whatever a server sends."""
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= MAX_ERROR_BODY:
            break
    return bytes(body[:MAX_ERROR_BODY])


def engine_message(body: bytes) -> str:
    """A remote party's own words for a refusal: its JSON ``message`` (``{"message"}``, or OpenAI's
    ``{"error": {"message"}}``), else the start of its body; printable, at most 200 characters."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        for holder in (inner if isinstance(inner, dict) else {}, parsed):
            if isinstance(holder.get("message"), str):
                return printable(" ".join(holder["message"].split()), MESSAGE)
        if isinstance(inner, str):
            return printable(" ".join(inner.split()), MESSAGE)
    text = " ".join(body.decode("utf-8", errors="replace").split())
    return printable(text, MESSAGE) if text else "(no body)"


def wire_problem(err: BaseException) -> str:
    """What went wrong on the wire, in words: "it could not be reached (Connection refused)"."""
    detail = printable(" ".join(str(err).split()) or type(err).__name__, 120)
    if isinstance(err, httpx.ConnectError | httpx.ConnectTimeout):
        return f"it could not be reached ({detail})"
    if isinstance(err, httpx.ReadTimeout):
        return "it stopped answering (read timeout)"
    if isinstance(err, httpx.RemoteProtocolError):
        return f"its answer was cut short ({detail})"
    return f"{type(err).__name__} ({detail})"
