"""The OpenAPI 3 document, derived by apispec from the code it describes.

The paths come from the Flask routes (apispec-webframeworks' FlaskPlugin), each operation from
the YAML after ``---`` in its view's docstring (beside the code, with the view's first docstring
line as its summary), and every schema from marshmallow: the input schemas the views load with
(``app/schemas.py``) and the response bodies (``bodies.py``). What many operations share (the
runId, ``Prefer``, the error answers) is a component below, named in the docstrings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec_webframeworks.flask import FlaskPlugin
from flask import Flask

from app.openapi import bodies
from app.schemas import LIVE_PACE_MS
from app.schemas import MAX_PACE_MS
from app.schemas import MAX_POSITION

JSON = "application/json"
BEARER = "bearerKey"
_UNDOCUMENTED_METHODS = frozenset({"HEAD", "OPTIONS"})  # answered alike by every route


# Documents already built, by the routes they describe: every app a process makes has the same
# routes, and apispec's parsing of the docstrings' YAML is most of an app's start (50 ms of 60).
_built: dict[tuple[tuple[str, str, tuple[str, ...], Callable[..., Any]], ...], dict[str, Any]] = {}


def build_openapi(app: Flask) -> dict[str, Any]:
    """The document for every route of ``app``, to be read, never changed (apps share it).

    :raises RuntimeError: a route's view documents none of its methods (so none ships undocumented).
    """
    routes = tuple((rule.rule, rule.endpoint, tuple(sorted(rule.methods or ())), app.view_functions[rule.endpoint])
                   for rule in app.url_map.iter_rules() if rule.endpoint != "static")
    if routes not in _built:
        _built[routes] = _document(app)
    return _built[routes]


def _document(app: Flask) -> dict[str, Any]:
    spec = APISpec(
        title="Run Registry", version="1.0.0", openapi_version="3.0.3",
        info={"description": "Runs each deterministic scenario once and keeps its transcript as evidence."},
        plugins=[FlaskPlugin(), MarshmallowPlugin()],
    )
    _add_components(spec)
    views = {endpoint: view for endpoint, view in app.view_functions.items() if endpoint != "static"}
    for view in views.values():
        spec.path(view=view, app=app)
    document = spec.to_dict()
    document["security"] = [{BEARER: []}]  # every operation but those that say otherwise (healthz, readyz, pages)
    for rule in app.url_map.iter_rules():
        if rule.endpoint in views:
            path = FlaskPlugin.flaskpath2openapi(rule.rule)
            _check_documented(document, path, rule.methods or set(), views[rule.endpoint])
            _declare_scopes(document, path, rule.methods or set(), views[rule.endpoint])
    return document


def _declare_scopes(document: dict[str, Any], path: str, methods: set[str], view: Callable[..., Any]) -> None:
    """Each operation's scopes (``x-scopes``; OpenAPI 3.0 has scopes for OAuth only), its 401 and
    403 answers, or ``security: []`` for an open one."""
    scopes = getattr(view, "required_scopes", None)
    if scopes is None:
        raise RuntimeError(f"{path}: {view.__module__}.{view.__name__} declares no scopes (app.api.requires)")
    for method in methods - _UNDOCUMENTED_METHODS:
        operation = document["paths"][path][method.lower()]
        if not scopes:
            operation["security"] = []
            continue
        operation["x-scopes"] = list(scopes)
        operation["responses"].setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
        operation["responses"].setdefault("403", {"$ref": "#/components/responses/Forbidden"})


def _check_documented(document: dict[str, Any], path: str, methods: set[str], view: Callable[..., Any]) -> None:
    """Every method of the route has an operation; one without a summary takes the view's first line."""
    operations = document["paths"].get(path, {})
    for method in sorted(methods - _UNDOCUMENTED_METHODS):
        operation = operations.get(method.lower())
        if operation is None or "responses" not in operation:
            raise RuntimeError(f"{method} {path}: {view.__module__}.{view.__name__} documents no such operation")
        operation.setdefault("summary", (view.__doc__ or "").strip().splitlines()[0])


def _add_components(spec: APISpec) -> None:
    spec.components.schema("Error", schema=bodies.ErrorBody)
    parameters: dict[str, tuple[str, dict[str, Any]]] = {
        "run_id": ("path", {"required": True, "schema": {"type": "string"}, "description": "A runId from a lookup",
                            "example": "run_pricing-v1_42_1764180000123"}),
        "Prefer": ("header", {"schema": {"type": "string"}, "description": (
            "RFC 7240: `wait=<seconds>` (at most 25) or `respond-async`; echoed in Preference-Applied")}),
        "Last-Event-ID": ("header", {"schema": _position(), "description": (
            "SSE only: resume after this 1-based position")}),
        "lastEventId": ("query", {"schema": _position(), "description": (
            "SSE only: as Last-Event-ID, for clients that cannot set headers")}),
        "pace": ("query", {"schema": {"oneOf": [{"type": "string", "enum": ["live"]},
                                                {"type": "integer", "minimum": 0, "maximum": MAX_PACE_MS}]},
                           "description": f"SSE only: 'live' ({LIVE_PACE_MS} ms between events) or a delay"
                                          " in milliseconds"}),
    }
    for name, (location, parameter) in parameters.items():
        spec.components.parameter(name, location, parameter)
    retry_after = {"Retry-After": {"schema": {"type": "integer", "minimum": 0}, "required": True,
                                   "description": "Seconds to wait before asking again"}}
    responses = {
        "Pending": _json(bodies.RunPendingBody, "The run is still running after the wait: ask again after"
                                                " Retry-After, at Location",
                         headers={**retry_after, "Location": {"schema": {"type": "string"}, "required": True}}),
        "NotModified": {"description": "If-None-Match matched the strong ETag of this representation"},
        "BadInput": _error("BAD_INPUT: missing, repeated or malformed input, named in the message"),
        "Forbidden": _error("FORBIDDEN: the key lacks a scope this needs (with keys configured), or a page of"
                            " another site sent it (Sec-Fetch-Site: cross-site)"),
        "Unauthorized": _error("UNAUTHORIZED: with keys configured, no usable key (none, another scheme, an"
                               " unknown secret); WWW-Authenticate names the scheme",
                               headers={"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}),
        "NotFound": _error('No live run has this runId: `{"type": "BAD_INPUT", ...}`'),
        "TooLarge": _error("PAYLOAD_TOO_LARGE: a body over 64 KiB"),
        "NotJson": _error("UNSUPPORTED_MEDIA_TYPE: a body that is not JSON (a form, text)"),
        "RateLimited": _error("RATE_LIMITED: this client started its share of engine executions this minute;"
                              " retry after Retry-After", headers=retry_after),
        "EngineError": _error("ENGINE_ERROR: the engine failed (or INTERNAL, anything unexpected)"),
        "Unavailable": _error("UNAVAILABLE: the backend does not answer, the engine or the registry is full,"
                              " or too many connections wait; retry after Retry-After"),
    }
    for name, response in responses.items():
        spec.components.response(name, response)
    spec.components.security_scheme(BEARER, {
        "type": "http", "scheme": "bearer",
        "description": "With RUN_REGISTRY_API_KEYS set: `Authorization: Bearer <secret>` of a key whose scopes"
                       " (read, run, ops) include each operation's `x-scopes`; a lookup or a compare that would"
                       " start a run needs `run` as well. Without keys the service is open.",
    })


def _position() -> dict[str, Any]:
    return {"type": "integer", "minimum": 1, "maximum": MAX_POSITION}


def _json(schema: Any, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(bodies.ErrorBody, description, headers)
