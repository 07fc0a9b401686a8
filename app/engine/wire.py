"""The wire to remote engines (HTTP engines, LLM servers): httpx, its bytes counted, its
connections closable from another thread, and a remote party's refusals put in words.

httpx is the client, and Server-Sent Events are parsed by httpx-sse, both kept by others (a
parser of our own would be one more thing to get wrong). A transport of ours counts each
answer's bytes as they arrive (past the transcript's bound the answer fails: a server may send a
line, or an SSE message, that never ends) and remembers its connections, so that the recorder
can shut a run's connection down at the timeout while the engine thread reads it.
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

from app.concurrency import native_lock
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.text import printable

MAX_ERROR_BODY = 4096  # of a refusal's body, read for its message
MESSAGE = 200  # characters of a remote party's own message in a failure's


def client(transport: CountingTransport, headers: dict[str, str], read_timeout_s: float) -> httpx.Client:
    """A client for one run or one description (never shared between threads: under gevent each
    thread has its own hub, and a pool's locks must not cross them)."""
    return httpx.Client(transport=transport, headers=headers, timeout=httpx.Timeout(10.0, read=read_timeout_s))


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
