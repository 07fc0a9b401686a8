"""Structured logs: one JSON object a line, each carrying the request id of its request.

Two streams, one shape: application lines go through ``logging`` (``JsonFormatter``), and
the one line per request is written by ``AccessLog``, which is cheaper.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from datetime import UTC
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

from flask import Flask
from flask import request

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
# nginx's $request_id is 32 hex digits and Heroku's router sends a UUID: both fit. Anything
# else (a path, markup, a header-splitting attempt) is replaced rather than echoed.
_accepted_request_id = re.compile(r"[A-Za-z0-9._-]{1,128}").fullmatch
_LOG_FIELDS = "run_registry.log_fields"
# A hostile query string must not become a hostile log line: one escaped character is up to six
# bytes, and these bounds keep a whole request line under PIPE_BUF (4 KiB), written atomically.
MAX_LOGGED_PATH = 400
MAX_LOGGED_PATH_IN_MESSAGE = 100
MAX_LOGGED_METHOD = 16
_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Stamp every record with the id of the request being served in this thread, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update((key, value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encode(entry)


class DefectLog:
    """Logs a defect of one thing (a stored record, say) once, not on every request that meets it.

    Remembers the last ``capacity`` things reported, so its memory is bounded whatever arrives.
    """

    def __init__(self, logger: logging.Logger, capacity: int = 1024) -> None:
        self._logger = logger
        self._capacity = capacity
        self._reported: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, thing: str, message: str, *args: object) -> None:
        with self._lock:
            if thing in self._reported:
                return
            self._reported[thing] = None
            if len(self._reported) > self._capacity:
                self._reported.popitem(last=False)
        self._logger.error(message, *args)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Every log line of this process on stdout as one JSON object (gunicorn's processes get the
    same from gunicorn.conf.py; this is for the others, such as the workers)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def annotate_request(**fields: Any) -> None:
    """Add fields to this request's log line (a view's one way to say, e.g., the lookup source)."""
    log_request_fields(request.environ, **fields)


def log_request_fields(environ: dict[str, Any], **fields: Any) -> None:
    """``annotate_request`` for code that holds the request's environ already."""
    environ.setdefault(_LOG_FIELDS, {}).update(fields)


class AccessLog:
    """The request lines: one JSON object a line, written straight to a file descriptor.

    Not through ``logging``: a LogRecord, a handler lock and a formatter cost more than all
    the rest of a cache hit. The line is assembled from precomputed pieces, each value that a
    client chose escaped by the C string encoder (JSON, ASCII only); the fields are those of
    ``JsonFormatter``'s lines, so the two streams read alike. One ``os.write`` a line is atomic
    on a pipe for lines under PIPE_BUF (4 KiB; the logged path is bounded for that), so threads
    and workers never interleave lines.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd  # None: request lines are off

    def write(self, request_id: str, method: str, path: str, query: str | None, status: int, seconds: float,
              client: str | None, fields: dict[str, Any] | None) -> None:
        """One request's line; ``request_id`` is already one of the accepted ids (nothing to escape)."""
        if self._fd is None:
            return
        logged_path = (f"{path}?{query}" if query else path)[:MAX_LOGGED_PATH]
        line = (
            f'{{"ts":"{_timestamp(time.time())}",{_REQUEST_LINE_HEAD}'
            f'"message":{_quote(f"{method} {path[:MAX_LOGGED_PATH_IN_MESSAGE]} {status}")},'
            f'"request_id":"{request_id}","method":{_quote(method)},"path":{_quote(logged_path)},'
            f'"status":{status},"duration_ms":{seconds * 1000:.3f},'
            f'"client":{"null" if client is None else _quote(client)}'
        )
        if fields:
            line += "".join(f",{_quote(key)}:{_encode(value)}" for key, value in fields.items())
        data = (line + "}\n").encode("ascii")
        while data:
            data = data[os.write(self._fd, data):]


class RequestLog:
    """WSGI middleware, the one layer every request passes: a request id, the time it took,
    one JSON log line and the metrics when it is answered, and the headers every response
    carries.

    The id is the incoming X-Request-ID when it is usable, else a new one; it is echoed in the
    response and stamped on every log line of the request. ``on_answered(endpoint, method,
    status, seconds)`` hears of each answer too (the metrics). It works on the WSGI environ,
    below Flask, and reads the matched route from the request Flask left there, so what it adds
    to a request is a few microseconds (docs/benchmarks.md).
    """

    def __init__(
        self, app: WSGIApplication, on_answered: Callable[[str, str, int, float], None], access_log: AccessLog
    ) -> None:
        self._app = app
        self._on_answered = on_answered
        self._access_log = access_log

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        incoming = environ.get("HTTP_X_REQUEST_ID")
        request_id = incoming if incoming is not None and _accepted_request_id(incoming) else secrets.token_hex(16)
        token = request_id_var.set(request_id)

        def answered(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seconds = time.perf_counter() - started
            code = int(status[:3])
            method = environ.get("REQUEST_METHOD", "")[:MAX_LOGGED_METHOD]
            # Flask leaves its request in the environ (werkzeug does, for any middleware): the
            # matched route's template labels the metrics; no route matched, or none was tried.
            flask_request = environ.get("werkzeug.request")
            rule = flask_request.url_rule if flask_request is not None else None
            self._on_answered(rule.rule if rule is not None else "unmatched", method, code, seconds)
            self._access_log.write(request_id, method, environ.get("PATH_INFO", ""), environ.get("QUERY_STRING"),
                                   code, seconds, environ.get("REMOTE_ADDR"), environ.get(_LOG_FIELDS))
            headers.append(("X-Request-ID", request_id))
            # Browsers must take every body as the type it declares (no sniffing JSON into HTML).
            headers.append(_NOSNIFF)
            return start_response(status, headers, exc_info)

        try:
            if environ.get("PATH_INFO", "")[:2] == "//":
                return _no_such_path(answered)
            return self._app(environ, answered)
        finally:
            request_id_var.reset(token)


def _no_such_path(start_response: StartResponse) -> list[bytes]:
    """A path that starts with two slashes names no route. Routing would take ``//runs/<id>/replay``
    as ``/runs/<id>/replay``, and the page's own links, made from its path, would then be
    protocol-relative (``//runs/...``: another host). Checked here, before Flask, for a few
    nanoseconds a request."""
    body = b'{"type":"NOT_FOUND","message":"No such endpoint"}\n'
    start_response("404 NOT FOUND", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def register_request_logging(
    app: Flask, on_answered: Callable[[str, str, int, float], None], access_log: AccessLog
) -> None:
    """Wrap the app in ``RequestLog``."""
    app.wsgi_app = RequestLog(app.wsgi_app, on_answered, access_log)  # type: ignore[method-assign]


# ASCII only: a client's path may carry U+0085, U+2028 or U+2029, which JSON leaves raw but
# many log consumers split lines on; escaped, every line stays one object whatever arrives.
_encode = json.JSONEncoder(ensure_ascii=True, default=str).encode
# The same escaping for one string, without an encoder around it: the C function behind _encode.
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii
_REQUEST_LINE_HEAD = '"level":"INFO","logger":"app.request",'
_NOSNIFF = ("X-Content-Type-Options", "nosniff")


@functools.lru_cache(maxsize=4)
def _second(whole_seconds: int) -> tuple[str, str]:
    """ISO 8601 of a second, split where the milliseconds go."""
    return tuple(datetime.fromtimestamp(whole_seconds, UTC).isoformat(timespec="milliseconds").split(".000"))  # type: ignore[return-value]


def _timestamp(seconds: float) -> str:
    """``2026-11-26T20:31:05.112+00:00``; the second's text is reused, it is the costly part."""
    whole = int(seconds)
    head, tail = _second(whole)
    return f"{head}.{int((seconds - whole) * 1000):03d}{tail}"
