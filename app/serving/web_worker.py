"""The web process' gunicorn worker: gevent's, with deadlines for clients that never finish.

gunicorn bounds how long a connection may take to send a request's head (``keepalive``), and
nothing after it: a body sent a byte a second, or an answer the client never reads, holds its
connection (a greenlet, and one of the worker's ``GUNICORN_WORKER_CONNECTIONS``) as long as the
client likes; 2,000 such bodies kept /healthz from answering at all. This worker adds three
bounds, all of ``RUN_REGISTRY_CLIENT_TIMEOUT_S`` (default 10 s):

- a request's body must be whole that long after its head, or it is answered
  ``408 REQUEST_TIMEOUT`` and its connection closed. The worker reads it (at most 64 KiB and a
  byte) before the app sees the request, as a buffering proxy would: the app only ever meets
  whole requests, and a client that never finishes costs no more than its connection;
- a write that the client leaves unread that long closes the connection: no progress at all for
  the timeout, so a slow reader of a big transcript is served, and a reader that stopped is not
  (gevent's own ``sendall`` would time out the whole write instead);
- near the connection limit (fewer than ``spare_connections`` free), the connections that have
  not yet given a whole request (idle keep-alive ones, heads and bodies on their way) are closed,
  those waiting longest first, so a new client gets in instead of waiting in the backlog.

Written here, on gunicorn's own worker, because neither gunicorn nor gevent has these: gevent's
pywsgi has no body deadline either, and a proxy that buffers (nginx) is not always in front.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from collections import OrderedDict
from typing import Any

import gevent
import gunicorn.util
from gevent import getcurrent
from gunicorn.http.body import LengthReader
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from app.config import MAX_BODY_BYTES
from app.config import load_settings

LINGER_S = 2.0  # the longest a closing connection reads what its client still sends
LINGER_BYTES = 1024 * 1024
# The answers gunicorn (and this worker) give themselves, before the app sees a request.
_ERROR_TYPES = {400: "BAD_INPUT", 403: "FORBIDDEN", 408: "REQUEST_TIMEOUT", 414: "URI_TOO_LONG",
                417: "EXPECTATION_FAILED", 431: "HEADERS_TOO_LARGE", 500: "INTERNAL", 501: "NOT_IMPLEMENTED"}


def write_json_error(sock: Any, status: int, reason: str, mesg: str) -> None:  # noqa: ARG001
    """gunicorn's error writer, replaced: JSON like every answer, and nothing of the input echoed
    (gunicorn's own page echoes ``mesg``: it is not sent; the reason is the message)."""
    _answer_error(sock, status, reason, reason)


def _answer_error(sock: Any, status: int, reason: str, message: str) -> None:
    """An error answered before the app sees the request, and the connection's end."""
    body = json.dumps({"type": _ERROR_TYPES.get(status, "BAD_INPUT"), "message": message})
    gunicorn.util.write_nonblock(sock, (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n\r\n{body}"
    ).encode("latin-1"))


class WebWorker(GeventWorker):
    """gunicorn's gevent worker with the bounds above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout_s = load_settings(os.environ).client_timeout_s  # valid: the master checked
        self.spare_connections = max(10, self.worker_connections // 20)
        self._connections: dict[Any, socket.socket] = {}  # greenlet -> its connection
        # The greenlets of connections waiting for a request's head or body, longest waiting first.
        self._unfinished: OrderedDict[Any, None] = OrderedDict()
        self._closed = {"to make room": 0, "for a body that did not arrive in time": 0}
        self._said_at = 0.0
        self._quitting = False

    def handle_quit(self, sig: int, frame: Any) -> None:
        """Quit once: Ctrl-C reaches every process of the terminal's group, so a worker hears it as
        well as the master's own SIGQUIT, and a second quit, raised while the first is shutting the
        interpreter down, is printed by gevent as a SystemExit traceback."""
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        # gevent's worker makes the socket blocking without a timeout; this one has one, which
        # bounds each wait to send and each read (the head's is shorter still: keepalive).
        client.settimeout(self.client_timeout_s)
        self._make_room()
        greenlet = getcurrent()
        self._connections[greenlet] = client
        try:
            AsyncWorker.handle(self, listener, _Connection(client, self._unfinished), addr)
        finally:
            del self._connections[greenlet]
            self._unfinished.pop(greenlet, None)

    def timeout_ctx(self) -> _Unfinished:
        """Around the wait for the next request's head: the connection has given nothing whole yet."""
        return _Unfinished(self._unfinished, gevent.Timeout(self.cfg.keepalive, False))

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> Any:
        reader = req.body.reader
        if not (isinstance(reader, LengthReader) and reader.length == 0) and not self._read_body(req, sock):
            raise StopIteration()  # answered here, or the client is gone: the connection closes
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:  # a send the client left unread: nothing more can be said to it
            self.log.info("run-registry: closed a connection whose client left an answer unread for %g s",
                          self.client_timeout_s)
            raise StopIteration() from None

    def _read_body(self, req: Any, sock: socket.socket) -> bool:
        """Read the request's body whole, within the client timeout, into memory for the app.

        :returns: ``False`` when the request was answered here (408) or its client went away.
        """
        reader = req.body.reader
        if isinstance(reader, LengthReader) and reader.length > MAX_BODY_BYTES:
            req.must_close = True  # the app refuses it (413) unread; the rest is not read either
            sock.linger = True  # type: ignore[attr-defined]
            return True
        if req._expected_100_continue:  # the client waits for this before it sends the body
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req._expected_100_continue = False  # so gunicorn does not say it again
        try:
            with _Unfinished(self._unfinished, gevent.Timeout(self.client_timeout_s, TimeoutError)):
                # One byte past the limit: a chunked body that long is the app's to refuse (413).
                body = req.body.read(MAX_BODY_BYTES + 1)
        except TimeoutError:
            self._count_closed("for a body that did not arrive in time")
            _answer_error(sock, 408, "Request Timeout",
                          f"The request's body did not arrive within {self.client_timeout_s:g} s of its head")
            return False
        except (NoMoreData, OSError):  # the client went away, or was closed to make room
            return False
        if len(body) > MAX_BODY_BYTES:
            req.must_close = True
            sock.linger = True  # type: ignore[attr-defined]
        req.body = io.BytesIO(body)
        return True

    def _make_room(self) -> None:
        """Close unfinished connections, the longest waiting first, until enough are free."""
        excess = len(self._connections) + 1 + self.spare_connections - self.worker_connections
        while excess > 0 and self._unfinished:
            greenlet, _ = self._unfinished.popitem(last=False)
            excess -= 1
            connection = self._connections.get(greenlet)
            if connection is not None:
                self._count_closed("to make room")
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)  # its greenlet wakes to an end of stream

    def _count_closed(self, why: str) -> None:
        """Count a connection closed; say how many, once a minute at most (an attack is thousands)."""
        self._closed[why] += 1
        if time.monotonic() - self._said_at > 60:
            self.log.warning("run-registry: connections closed that had sent no whole request: %s (limit %d)",
                             ", ".join(f"{count} {reason}" for reason, count in self._closed.items()),
                             self.worker_connections)
            self._closed = dict.fromkeys(self._closed, 0)
            self._said_at = time.monotonic()


class _Connection:
    """A client's socket whose ``sendall`` fails only when the client takes nothing for the
    socket's timeout (each ``send`` waits that long for room, and sends what fits), and whose
    ``close`` lingers when a body was left unread."""

    def __init__(self, sock: socket.socket, unfinished: OrderedDict[Any, None]) -> None:
        self._sock = sock
        self._unfinished = unfinished
        self.recv = sock.recv  # the parser's every read: bound once, not looked up each time
        # A body was refused unread (413): the client may still be sending it. Not after a 408: a
        # client that slow is read no longer (lingering on thousands of them cost the others).
        self.linger = False

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._sock.send(view):]

    def close(self) -> None:
        """Closing a socket with unread bytes resets the connection, and the client may lose the
        answer it was about to read (the 413 of a body too large): so say the end first, and read
        what is still coming, for a moment at most (as nginx's lingering close does)."""
        if self.linger:  # meanwhile closable to make room, as a connection that waits for a request
            with contextlib.suppress(OSError), _Unfinished(self._unfinished, gevent.Timeout(LINGER_S, False)):
                self._sock.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < LINGER_BYTES and (chunk := self._sock.recv(65536)):
                    drained += len(chunk)
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Unfinished:
    """A connection's greenlet marked unfinished (closable to make room) within a gevent timeout.

    A class rather than ``@contextmanager``: every request enters one, and a generator-based one
    costs several times as much.
    """

    def __init__(self, unfinished: OrderedDict[Any, None], timeout: gevent.Timeout) -> None:
        self._unfinished = unfinished
        self._timeout = timeout
        self._greenlet: Any = None

    def __enter__(self) -> None:
        self._greenlet = getcurrent()
        self._unfinished[self._greenlet] = None
        self._timeout.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        self._unfinished.pop(self._greenlet, None)
        return self._timeout.__exit__(*exc_info)
