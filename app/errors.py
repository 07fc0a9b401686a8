"""The service's error family and the one handler that turns every error into JSON."""

from __future__ import annotations

import logging

from flask import Flask
from flask import Response
from flask import jsonify
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError

from app.logs import annotate_request

log = logging.getLogger(__name__)

# Error types of the contract (docs/api.md, "Error types") for the HTTP errors werkzeug raises.
_HTTP_ERROR_TYPES = {
    400: "BAD_INPUT",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    500: "INTERNAL",
}
_HTTP_ERROR_MESSAGES = {
    400: "The request could not be understood",
    404: "No such endpoint",
    405: "Method not allowed for this endpoint",
    413: "The request body is larger than 64 KiB",
    500: "Internal error",
}


class ServiceError(Exception):
    """An error the API reports as {"type", "message"}; ``retry_after`` (seconds) becomes Retry-After."""

    error_type = "INTERNAL"
    status = 500
    default_retry_after: int | None = None

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after


class BadInput(ServiceError):
    error_type, status = "BAD_INPUT", 400


class RunNotFound(ServiceError):
    error_type, status = "BAD_INPUT", 404  # the original document's body, kept for clients


class EngineFailed(ServiceError):
    error_type, status = "ENGINE_ERROR", 500


class EngineMismatch(ServiceError):
    error_type, status = "ENGINE_MISMATCH", 409


class RunRunning(ServiceError):
    error_type, status = "RUN_RUNNING", 409


class RunPending(Exception):
    """Not an error: the run is not done yet, so its complete transcript cannot be served.

    Answered ``202 {"runId", "status": "running", "count"}`` with ``Location`` and ``Retry-After``.
    """

    def __init__(self, run_id: str, count: int) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.count = count


class Unavailable(ServiceError):
    error_type, status = "UNAVAILABLE", 503
    default_retry_after = 1  # outages and full engines are short-lived


class RateLimited(ServiceError):
    error_type, status = "RATE_LIMITED", 429

    def __init__(self, message: str, retry_after: int, client: str) -> None:
        super().__init__(message, retry_after)
        self.client = client  # whose limit it is: callers sharing a flight may be other clients


class Unauthorized(ServiceError):
    """No usable key: none sent, another scheme, or a secret no key has."""

    error_type, status = "UNAUTHORIZED", 401


class Forbidden(ServiceError):
    """A key without the scope a request needs."""

    error_type, status = "FORBIDDEN", 403


class CrossSiteRequest(ServiceError):
    error_type, status = "FORBIDDEN", 403


class UnsupportedMediaType(ServiceError):
    error_type, status = "UNSUPPORTED_MEDIA_TYPE", 415


def error_response(error_type: str, message: str, status: int) -> Response:
    """The one error body shape of the contract."""
    response = jsonify({"type": error_type, "message": message})
    response.status_code = status
    return response


# Seconds a client is told to wait before asking again about a run that is not done.
PENDING_RETRY_AFTER_S = 2


def pending_response(body: dict[str, object], run_id: str) -> Response:
    """A 202 for a run still running: where to ask about it, and when."""
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = f"/runs/{run_id}"
    response.headers["Retry-After"] = str(PENDING_RETRY_AFTER_S)
    return response


def register_error_handlers(app: Flask) -> None:
    """Answer every error, ours and werkzeug's, with the contract's JSON body."""

    @app.errorhandler(ServiceError)
    def handle_service_error(error: ServiceError) -> Response:
        response = error_response(error.error_type, error.message, error.status)
        if isinstance(error, Unavailable) and error.__cause__ is not None:
            # The body stays general; the request line says which part failed (as "redis: TimeoutError").
            annotate_request(cause=str(error.__cause__))
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        if isinstance(error, Unauthorized):  # RFC 6750: which scheme, and for what
            response.headers["WWW-Authenticate"] = 'Bearer realm="run-registry"'
        return response

    @app.errorhandler(RunPending)
    def handle_run_pending(pending: RunPending) -> Response:
        return pending_response({"runId": pending.run_id, "status": "running", "count": pending.count}, pending.run_id)

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, InternalServerError) and error.original_exception is not None:
            log.error("unhandled error", exc_info=error.original_exception)
        body = error_response(
            _HTTP_ERROR_TYPES.get(status) or _snake_upper(error.name),
            _HTTP_ERROR_MESSAGES.get(status) or error.name,
            status,
        )
        # Keep werkzeug's own headers, such as Allow on a 405.
        for name, value in error.get_response().headers.items():
            if name not in ("Content-Type", "Content-Length"):
                body.headers.add(name, value)
        return body


def _snake_upper(name: str) -> str:
    """'Request Timeout' -> 'REQUEST_TIMEOUT', for HTTP errors the contract does not name."""
    return "".join(ch if ch.isalnum() else "_" for ch in name.upper())
