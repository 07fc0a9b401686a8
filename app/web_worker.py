"""The web process' gunicorn worker: gevent's, with deadlines for clients that never finish.

gunicorn bounds how long a connection may take to send a request's head (``keepalive``), and
nothing after it: a body sent a byte a second, or an answer the client never reads, holds its
connection (a greenlet, and one of the worker's ``GUNICORN_WORKER_CONNECTIONS``) as long as the
client likes; 2,000 such bodies kept /healthz from answering at all. This worker adds three
bounds, all of ``RUN_REGISTRY_CLIENT_TIMEOUT_S`` (default 10 s):

- a request's body must be whole that long after its head: past it the request is answered
  ``408 REQUEST_TIMEOUT`` and its connection closed;
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
import heapq
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
from gevent import getcurrent
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import BadRequest
from werkzeug.exceptions import RequestTimeout

from app.config import load_settings


class WebWorker(GeventWorker):
    """gunicorn's gevent worker with the bounds above."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client_timeout_s = load_settings(os.environ).client_timeout_s  # valid: the master checked
        self.spare_connections = max(10, self.worker_connections // 20)
        self._connections: dict[Any, socket.socket] = {}  # greenlet -> its connection
        self._unfinished: dict[Any, float] = {}  # greenlet -> since when its request is on its way
        self.closed_unfinished = 0

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        # gevent's worker makes the socket blocking without a timeout; this one has one, which
        # bounds each wait to send and each read (the head's is shorter still: keepalive).
        client.settimeout(self.client_timeout_s)
        self._make_room()
        greenlet = getcurrent()
        self._connections[greenlet] = client
        try:
            AsyncWorker.handle(self, listener, _Connection(client), addr)
        finally:
            del self._connections[greenlet]
            self._unfinished.pop(greenlet, None)

    def timeout_ctx(self) -> _Unfinished:
        """Around the wait for the next request's head: the connection has given nothing whole yet."""
        return _Unfinished(self._unfinished, time.monotonic(), gevent.Timeout(self.cfg.keepalive, False))

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> Any:
        req.body = _DeadlineBody(req, self, time.monotonic())
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:  # a send the client left unread: nothing more can be said to it
            self.log.info("run-registry: closed a connection whose client left an answer unread for %g s",
                          self.client_timeout_s)
            raise StopIteration() from None

    def unfinished_request(self, since: float, deadline_s: float) -> _Unfinished:
        """Around a read of a request's body: still unfinished, and bounded by ``deadline_s``."""
        return _Unfinished(self._unfinished, since, gevent.Timeout(deadline_s, TimeoutError))

    def _make_room(self) -> None:
        """Close unfinished connections, the longest waiting first, until enough are free."""
        excess = len(self._connections) + 1 + self.spare_connections - self.worker_connections
        if excess <= 0:
            return
        for greenlet, _ in heapq.nsmallest(excess, self._unfinished.items(), key=lambda item: item[1]):
            connection = self._connections.get(greenlet)
            del self._unfinished[greenlet]
            if connection is not None:
                self.closed_unfinished += 1
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)  # its greenlet wakes to an end of stream


class _Connection:
    """A client's socket whose ``sendall`` fails only when the client takes nothing for the
    socket's timeout: each ``send`` waits that long for room, and sends what fits."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.recv = sock.recv  # the parser's every read: bound once, not looked up each time

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._sock.send(view):]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Unfinished:
    """A connection's greenlet marked unfinished (closable to make room) within a gevent timeout.

    A class rather than ``@contextmanager``: every request enters one, and a generator-based one
    costs several times as much.
    """

    def __init__(self, unfinished: dict[Any, float], since: float, timeout: gevent.Timeout) -> None:
        self._unfinished = unfinished
        self._since = since
        self._timeout = timeout
        self._greenlet: Any = None

    def __enter__(self) -> None:
        self._greenlet = getcurrent()
        self._unfinished[self._greenlet] = self._since
        self._timeout.__enter__()

    def __exit__(self, *exc_info: Any) -> bool | None:
        self._unfinished.pop(self._greenlet, None)
        return self._timeout.__exit__(*exc_info)


class _DeadlineBody:
    """A request's body (``wsgi.input``) that must arrive within the client timeout of its head.

    Past the deadline a read raises ``RequestTimeout`` (the app answers 408), and the connection
    closes after the answer: the rest of the body would have to be read before the next request.
    """

    def __init__(self, req: Any, worker: WebWorker, started: float) -> None:
        self._req = req
        self._body = req.body
        self._worker = worker
        self._started = started
        self._deadline = started + worker.client_timeout_s

    def read(self, size: int | None = None) -> bytes:
        return self._within_deadline(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._within_deadline(self._body.readline, size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        return self._within_deadline(self._body.readlines, size)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _within_deadline(self, read: Any, size: int | None) -> Any:
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            with self._worker.unfinished_request(self._started, remaining):
                return read(size)
        except TimeoutError:
            self._req.must_close = True
            raise RequestTimeout(f"The request's body did not arrive within {self._worker.client_timeout_s:g} s"
                                 " of its head") from None
        except NoMoreData:  # the client went away, or the worker closed it to make room
            self._req.must_close = True
            raise BadRequest("The request's body ended before its length") from None
