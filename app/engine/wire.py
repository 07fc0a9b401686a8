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
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import httpx

from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.serving.concurrency import native_lock
from app.text import printable

MAX_ERROR_BODY = 4096  # of a refusal's body, read for its message
MESSAGE = 200  # characters of a remote party's own message in a failure's


class Wire:
    """One remote engine's connections: each engine thread keeps its own client between its runs
    (a connection kept alive saves a new one per run: 3.4 ms of a 28 ms run against a local
    server, measured; a TLS handshake against a hosted API). Never shared between threads: under
    gevent each thread has its own hub, and a pool's locks must not cross them."""

    def __init__(self, headers: dict[str, str], read_timeout_s: float) -> None:
        self._headers = headers
        self._read_timeout_s = read_timeout_s
        self._ssl = httpx.create_ssl_context()  # made once: it reads the CA bundle (milliseconds)
        self._mine = threading.local()  # under gevent, per native thread (each its own main greenlet)
        self._lock = native_lock()
        self._kept: list[httpx.Client] = []
        # Closed with the engine, or when it is collected (a test's app): no connection outlives it.
        self.close = weakref.finalize(self, _close_all, self._kept, self._lock)

    def for_run(self) -> RunConnection:
        """This thread's client, for one run."""
        held = getattr(self._mine, "held", None)
        if held is None:
            transport = CountingTransport(self._ssl)
            held = (self._client(transport, self._read_timeout_s), transport)
            self._mine.held = held
            with self._lock:
                self._kept.append(held[0])
        return RunConnection(self, *held)

    def for_description(self, timeout_s: float) -> httpx.Client:
        """A client of its own for one description (made and closed by the describing greenlet)."""
        return self._client(CountingTransport(self._ssl), timeout_s)

    def discard(self, client: httpx.Client) -> None:
        """Drop this thread's client (its connection was shut down): the next run makes another."""
        if getattr(self._mine, "held", (None,))[0] is client:
            self._mine.held = None
        with self._lock:
            if client in self._kept:
                self._kept.remove(client)
        client.close()

    def _client(self, transport: CountingTransport, read_timeout_s: float) -> httpx.Client:
        return httpx.Client(transport=transport, headers=self._headers,
                            timeout=httpx.Timeout(10.0, read=read_timeout_s))


def _close_all(clients: list[httpx.Client], lock: threading.Lock) -> None:
    with lock:
        kept, clients[:] = list(clients), []
    for client in kept:
        client.close()


class RunConnection:
    """A run's use of its thread's client: ``cancel`` (any thread) shuts its connection down;
    ``end`` (the run's thread) keeps the client for the next run, or drops it if it was shut."""

    def __init__(self, wire: Wire, client: httpx.Client, transport: CountingTransport) -> None:
        self.client = client
        self._wire = wire
        self._transport = transport
        self._generation = transport.begin()

    def cancel(self) -> None:
        self._transport.shutdown(self._generation)

    def end(self) -> None:
        if self._transport.finish(self._generation):
            self._wire.discard(self.client)


class TooLarge(Exception):
    """An answer past the transcript's bound."""


class CountingTransport(httpx.HTTPTransport):
    """httpx's transport, counting each answer's bytes as they arrive (past MAX_TRANSCRIPT_BYTES
    the answer fails: a server may send a line, or an SSE message, that never ends), and
    remembering the connection of the run now using it, so that another thread can shut it down.
    Runs take turns on it (``begin``, ``finish``); a late ``shutdown`` of an earlier run does nothing."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(verify=context, retries=0)
        self._lock = native_lock()
        self._sockets: list[socket.socket] = []
        self._generation = 0
        self._shut = False
        self._done = False

    def begin(self) -> int:
        with self._lock:
            self._generation += 1
            self._sockets, self._shut, self._done = [], False, False
            return self._generation

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

    def shutdown(self, generation: int) -> None:
        """End the run's connections' reads and writes now (from any thread)."""
        with self._lock:
            if generation != self._generation or self._done:
                return
            self._shut = True
            for sock in self._sockets:
                _shutdown(sock)

    def finish(self, generation: int) -> bool:
        """The run is over; whether its connection was shut down (the client is then dropped)."""
        with self._lock:
            if generation == self._generation:
                self._done = True
            return self._shut


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
