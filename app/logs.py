"""Structured logs: one JSON object a line, each carrying the request id of its request."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from datetime import datetime
from typing import Any

from flask import Flask
from flask import Response
from flask import g
from flask import request

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
request_log = logging.getLogger("app.request")
# nginx's $request_id is 32 hex digits and Heroku's router sends a UUID; anything printable
# and short is kept, anything else is replaced rather than echoed.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
MAX_LOGGED_PATH = 2048  # a hostile query string must not become a hostile log line
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
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
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
        return json.dumps(entry, ensure_ascii=False, default=str)


def annotate_request(**fields: Any) -> None:
    """Add fields to this request's log line (a view's one way to say, e.g., the lookup source)."""
    g.setdefault("log_fields", {}).update(fields)


def register_request_logging(app: Flask, on_answered: Callable[[str, str, int, float], None]) -> None:
    """Give each request an id (echoed as X-Request-ID) and log one JSON line when it is answered.

    ``on_answered(endpoint, method, status, seconds)`` also hears of each answer (the metrics).
    """

    @app.before_request
    def start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _ACCEPTED_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_token = request_id_var.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def finish(response: Response) -> Response:
        seconds = time.perf_counter() - g.request_started
        response.headers["X-Request-ID"] = g.request_id
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        on_answered(endpoint, request.method, response.status_code, seconds)
        request_log.info(
            "%s %s %s", request.method, request.path[:MAX_LOGGED_PATH], response.status_code,
            extra={
                "method": request.method,
                "path": request.full_path.rstrip("?")[:MAX_LOGGED_PATH],
                "status": response.status_code,
                "duration_ms": round(seconds * 1000, 3),
                "client": request.remote_addr,
                **g.get("log_fields", {}),
            },
        )
        return response

    @app.teardown_request
    def forget(_error: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id_var.reset(token)
