"""The OpenAPI 3 document, generated from the marshmallow schemas and checked against the routes."""

from __future__ import annotations

import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask

from app import schemas
from app.schemas import MAX_PACE_MS
from app.schemas import MAX_POSITION

JSON = "application/json"


def _json(schema: Any, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(media_type: str, description: str, binary: bool = False) -> dict[str, Any]:
    schema = {"type": "string", "format": "binary"} if binary else {"type": "string"}
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


_RUN_ID = {"in": "path", "name": "runId", "required": True, "schema": {"type": "string"},
           "description": "A runId from a lookup", "example": "run_pricing-v1_42_1764180000123"}
_POSITION = {"type": "integer", "minimum": 1, "maximum": MAX_POSITION}
_NOT_FOUND = {"404": _error("No live run has this runId: `{\"type\": \"BAD_INPUT\", ...}`")}
_UNAVAILABLE = {"503": _error("UNAVAILABLE: the backend does not answer, the engine or the registry is full, or"
                              " too many connections wait; retry after Retry-After")}
_ENGINE = {"500": _error("The engine failed (ENGINE_ERROR), or an unexpected error (INTERNAL)")}
_LIMITED = {"429": _error("RATE_LIMITED: this client started its share of engine executions this minute;"
                          " retry after Retry-After")}
_JSON_ONLY = {"403": _error("FORBIDDEN: sent by a page of another site (Sec-Fetch-Site: cross-site)"),
              "415": _error("UNSUPPORTED_MEDIA_TYPE: a body that is not JSON (a form, text)")}
_PENDING = {"202": _json(schemas.RunPendingBody, "The run is still running after the wait: ask again after"
                                                   " Retry-After, or at Location")}
_NOT_MODIFIED = {"304": {"description": "If-None-Match matched the strong ETag of this representation"}}
_PREFER = {"in": "header", "name": "Prefer", "schema": {"type": "string"}, "required": False,
           "description": "RFC 7240: `wait=<seconds>` (at most 25) or `respond-async`; echoed in Preference-Applied"}

# Every route's documentation, by (Flask rule, method). build_openapi refuses a route missing here.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/runs/lookup", "get"): {
        "summary": "Get or create the run for a scenario and seed",
        "parameters": [{"in": "query", "schema": schemas.LookupQuery}, _PREFER],
        "responses": {"200": _json(schemas.LookupResponse, "The runId of a done run, and whether this lookup"
                                                           " started it"),
                      "202": _json(schemas.LookupPending, "The run is still running after the wait"),
                      "400": _error("BAD_INPUT: missing, repeated or malformed parameters"),
                      **_LIMITED, **_ENGINE, **_UNAVAILABLE},
    },
    ("/runs/<run_id>", "get"): {
        "summary": "The run's metadata, running, done or failed (does not renew it)",
        "parameters": [_RUN_ID],
        "responses": {"200": _json(schemas.RunMetadata, "The run's metadata"), **_NOT_FOUND, **_UNAVAILABLE},
    },
    ("/runs/<run_id>/events", "get"): {
        "summary": "The recorded transcript: JSON, or Server-Sent Events with Accept: text/event-stream",
        "parameters": [
            _RUN_ID,
            {"in": "header", "name": "Last-Event-ID", "schema": _POSITION,
             "description": "SSE only: resume after this 1-based position"},
            {"in": "query", "name": "lastEventId", "schema": _POSITION,
             "description": "SSE only: as Last-Event-ID, for clients that cannot set headers"},
            {"in": "query", "name": "pace",
             "schema": {"oneOf": [{"type": "string", "enum": ["live"]},
                                  {"type": "integer", "minimum": 0, "maximum": MAX_PACE_MS}]},
             "description": "SSE only: 'live' (50 ms between events) or a delay in milliseconds"},
            _PREFER,
        ],
        "responses": {
            "200": {"description": "The transcript (JSON once done; SSE live while running)",
                    "content": {JSON: {"schema": schemas.EventsResponse},
                                "text/event-stream": {"schema": {"type": "string"}}}},
            **_PENDING, **_NOT_MODIFIED,
            "400": _error("BAD_INPUT: SSE only, a Last-Event-ID or pace that is not valid for this run"),
            "500": _error("ENGINE_ERROR: the run failed"),
            **_NOT_FOUND, **_UNAVAILABLE,
        },
    },
    ("/runs/<run_id>/replay", "get"): {
        "summary": "A self-contained HTML page that replays the run in a browser",
        "parameters": [_RUN_ID],
        "responses": {"200": _body("text/html", "The replay page"), **_NOT_FOUND, **_UNAVAILABLE},
    },
    ("/runs/<run_id>/snapshot", "get"): {
        "summary": "The ZIP evidence pack: manifest.json, events.json, events.csv, SHA256SUMS",
        "parameters": [_RUN_ID, _PREFER],
        "responses": {"200": _body("application/zip", "The evidence pack, <runId>.zip", binary=True),
                      **_PENDING, **_NOT_MODIFIED, "500": _error("ENGINE_ERROR: the run failed"),
                      **_NOT_FOUND, **_UNAVAILABLE},
    },
    ("/runs/<run_id>/export.csv", "get"): {
        "summary": "The transcript as CSV, safe to open in a spreadsheet",
        "parameters": [_RUN_ID, _PREFER],
        "responses": {"200": _body("text/csv", "position, type, tokenIndex, text, data"),
                      **_PENDING, **_NOT_MODIFIED, "500": _error("ENGINE_ERROR: the run failed"),
                      **_NOT_FOUND, **_UNAVAILABLE},
    },
    ("/runs/<run_id>/verify", "post"): {
        "summary": "Execute the engine again; is the transcript byte-identical?",
        "parameters": [_RUN_ID],
        "responses": {"200": _json(schemas.VerifyResponse, "The verdict, with both digests"),
                      "409": _error("ENGINE_MISMATCH: recorded under another engineCodeHash; RUN_RUNNING:"
                                    " not done yet"),
                      **_JSON_ONLY, **_LIMITED, **_NOT_FOUND, **_ENGINE, **_UNAVAILABLE},
    },
    ("/compare", "post"): {
        "summary": "Look two runs up (get or create) and compare them",
        "parameters": [_PREFER],
        "requestBody": {"required": True, "content": {JSON: {"schema": schemas.CompareBody}}},
        "responses": {"200": _json(schemas.CompareResponse, "Both runs and their diff"),
                      **_PENDING,
                      "400": _error("BAD_INPUT: the body, or the part of it named in the message"),
                      "413": _error("PAYLOAD_TOO_LARGE: over 64 KiB"),
                      **_JSON_ONLY, **_LIMITED, **_ENGINE, **_UNAVAILABLE},
    },
    ("/healthz", "get"): {
        "summary": "Alive", "responses": {"200": _json(schemas.HealthResponse, "The process answers")},
    },
    ("/readyz", "get"): {
        "summary": "Ready: the registry backend answers",
        "responses": {"200": _json(schemas.ReadinessResponse, "Ready, with the engine's identity"),
                      **_UNAVAILABLE},
    },
    ("/registry/stats", "get"): {
        "summary": "Registry statistics (with Redis, for every worker and host)",
        "responses": {"200": _json(schemas.StatsResponse, "The statistics"), **_UNAVAILABLE},
    },
    ("/metrics", "get"): {
        "summary": "Prometheus metrics", "responses": {"200": _body("text/plain", "Text exposition format")},
    },
    ("/openapi.json", "get"): {
        "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0", "content": {JSON: {}}}},
    },
}


def build_openapi(app: Flask) -> dict[str, Any]:
    """The document for every route of ``app``.

    :raises RuntimeError: a route has no entry in OPERATIONS (so none ships undocumented).
    """
    spec = APISpec(
        title="Run Registry", version="1.0.0", openapi_version="3.0.3",
        info={"description": "Runs each deterministic scenario once and keeps its transcript as evidence."},
        plugins=[MarshmallowPlugin()],
    )
    spec.components.schema("Error", schema=schemas.ErrorBody)
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = OPERATIONS.get((rule.rule, method.lower()))
            if operation is None:
                raise RuntimeError(f"{method} {rule.rule} has no OpenAPI documentation in app/openapi.py")
            paths.setdefault(_openapi_path(rule.rule), {})[method.lower()] = operation
    for path, operations in sorted(paths.items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()


def _openapi_path(rule: str) -> str:
    """'/runs/<run_id>/events' -> '/runs/{runId}/events'."""
    return re.sub(r"<(?:\w+:)?run_id>", "{runId}", rule)
