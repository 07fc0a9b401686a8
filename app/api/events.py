"""GET /runs/<runId> and /runs/<runId>/events: a run's metadata and its transcript (JSON or SSE)."""

from __future__ import annotations

import functools
import json
from typing import Any

from flask import Blueprint
from flask import Response
from flask import request
from werkzeug.datastructures import CombinedMultiDict
from werkzeug.datastructures import MultiDict

from app.api import JSON_TYPE
from app.api import answered_with
from app.api import caller
from app.api import conditional
from app.api import determinism_body
from app.api import evidence_service
from app.api import preferred_wait
from app.api import requires
from app.api import run_service
from app.api.negotiation import EVENT_STREAM
from app.api.negotiation import accepts_gzip
from app.api.negotiation import prefers_event_stream
from app.models import LedgerEntry
from app.models import RunIdentity
from app.models import run_description
from app.schemas import ReplayQuery
from app.schemas import load_or_bad_input

bp = Blueprint("events", __name__)
_replay_query = ReplayQuery()
_NO_REPLAY_PARAMETERS = _replay_query.load({})
_JSON_HEADERS = (JSON_TYPE, ("Vary", "Accept-Encoding"))
_GZIP_JSON_HEADERS = (*_JSON_HEADERS, ("Content-Encoding", "gzip"))
_EVENT_STREAM_HEADERS = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # nginx: do not buffer
)


@bp.get("/runs/<run_id>")
@requires("read")
def show_run(run_id: str) -> Response:
    """The run's metadata, in whatever state; reading it neither renews nor refreshes the run.
    ---
    get:
      parameters: [run_id]
      responses:
        '200':
          description: The run's metadata (eventsSha256, expiresAt and determinism once done, error once failed)
          content: {application/json: {schema: RunMetadata}}
        '404': NotFound
        '503': Unavailable
    """
    service = run_service()
    state = service.run(run_id)
    # The status is a known word, and counts and the digest need no escaping; the rest is memoised.
    body = f'{_description_json(state.identity)},"status":"{state.status}","count":{state.count}'
    if state.record is not None:
        body += f',"eventsSha256":"{state.record.events_sha256}","expiresAt":{state.expires_at}'
    body += f',"hits":{state.hits}'
    if state.record is not None:
        body += f',"determinism":{_determinism_json(service.determinism(state.record))}'
    if state.error is not None:
        body += f',"error":{_json({"type": state.error.type, "message": state.error.message})}'
    return Response(body + "}\n", headers=(JSON_TYPE,))


@bp.get("/runs/<run_id>/events")
@requires("read")
def list_events(run_id: str) -> Response:
    """The transcript: JSON from its stored bytes once the run is done, or Server-Sent Events
    (live while it runs) when the client asks.

    The replay parameters are checked either way (a malformed one is an error, never ignored),
    and used only by the event stream.
    ---
    get:
      parameters: [run_id, Last-Event-ID, lastEventId, pace, Prefer]
      responses:
        '200':
          description: The transcript (JSON once done; Server-Sent Events, live while the run runs)
          content:
            application/json: {schema: EventsResponse}
            text/event-stream: {schema: {type: string}}
        '204':
          description: "Server-Sent Events resumed at a done run's last position, or Last-Event-ID: end of a
            failed run's stream: nothing follows, and an EventSource stops reconnecting"
        '202': Pending
        '304': NotModified
        '400': BadInput
        '404': NotFound
        '500': EngineError
        '503': Unavailable
    """
    environ = request.environ
    header = environ.get("HTTP_LAST_EVENT_ID")
    if header is None and not environ.get("QUERY_STRING"):
        query = _NO_REPLAY_PARAMETERS  # the common case, without a schema's cost
    else:
        sources = [request.args] if header is None else [request.args, MultiDict({"Last-Event-ID": header})]
        query = load_or_bad_input(_replay_query, CombinedMultiDict(sources))
    service = run_service()
    if _wants_event_stream(environ.get("HTTP_ACCEPT", "")):
        stream = service.stream(run_id, query["last_event_id"], query["pace"], caller())
        if stream is None:  # the client saw the run end: 204 tells an EventSource to stop reconnecting
            response = Response(status=204)
            del response.headers["Content-Type"]
            return response
        return Response(stream, headers=_EVENT_STREAM_HEADERS)
    wait = preferred_wait(service)
    record = service.done_run(run_id, wait.seconds, caller())
    gzip_ok = accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))

    evidence = evidence_service()
    response = conditional(record, "json-gzip" if gzip_ok else "json", lambda: evidence.events_body(record, gzip_ok),
                           _GZIP_JSON_HEADERS if gzip_ok else _JSON_HEADERS)
    return answered_with(wait, response)


def _wants_event_stream(accept: str) -> bool:
    """Whether the client prefers Server-Sent Events to JSON (parsing Accept only when it could)."""
    if accept == EVENT_STREAM:  # what EventSource sends: nothing to weigh
        return True
    return EVENT_STREAM in accept and prefers_event_stream(accept)


def _determinism_json(entry: LedgerEntry | None) -> str:
    """``determinism_body(entry)`` as JSON, built as the rest of the metadata is (every read of a
    done run's metadata makes one); the runId is encoded, as it comes from the registry."""
    if entry is None:
        return _json(determinism_body(None))
    return (f'{{"status":"{entry.status}","checks":{entry.checks},"divergences":{entry.divergences},'
            f'"reference":{{"runId":{json.dumps(entry.reference_run_id)},"eventsSha256":"{entry.reference_sha256}",'
            f'"createdAt":{entry.reference_created_at}}}}}')


@functools.lru_cache(maxsize=1024)
def _description_json(identity: RunIdentity) -> str:
    """What never changes about a run, as JSON without its closing brace: read on every request
    for the run's metadata, encoded once."""
    return _json(run_description(identity))[:-1]


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))
