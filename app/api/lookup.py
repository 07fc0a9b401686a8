"""GET /runs/lookup: get or start the run for a scenario and seed."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import request

from app.api import JSON_TYPE
from app.api import answered_with
from app.api import caller
from app.api import preferred_wait
from app.api import requires
from app.api import run_service
from app.errors import pending_response
from app.logs import annotate_request
from app.schemas import lookup_query

bp = Blueprint("lookup", __name__)
# RFC 9211, with this service as the cache: a hit, or a miss that was forwarded to the engine.
_CACHE_STATUS = {"cache": "run-registry; hit", "new": "run-registry; fwd=miss"}
_DONE_HEADERS = {
    source: (JSON_TYPE, ("Cache-Status", cache_status))
    for source, cache_status in _CACHE_STATUS.items()
}


@bp.get("/runs/lookup")
@requires("read")
def lookup() -> Response:
    """Get or start the run for a scenario and seed; 202 if it is not done within the wait.
    ---
    get:
      parameters:
      - {in: query, schema: LookupQuery}
      - Prefer
      responses:
        '200':
          description: The runId of a done run, and whether this lookup started it (Cache-Status says so too)
          content: {application/json: {schema: LookupResponse}}
        '202':
          description: The run is still running after the wait; ask again after Retry-After
          content: {application/json: {schema: LookupPending}}
        '400': BadInput
        '429': RateLimited
        '500': EngineError
        '503': Unavailable
    """
    scenario_id, seed = lookup_query(request.query_string)
    service = run_service()
    wait = preferred_wait(service)
    answer = service.lookup(scenario_id, seed, caller(), wait.seconds)
    annotate_request(source=answer.source)
    if answer.done:
        # The hot path, written directly rather than through a JSON encoder: a runId is letters,
        # digits and ._- (the scenarioId's alphabet) and the source a known word, nothing to escape.
        response = Response(f'{{"runId":"{answer.run_id}","source":"{answer.source}"}}\n',
                            headers=_DONE_HEADERS[answer.source])
    else:
        response = pending_response({"runId": answer.run_id, "source": answer.source, "status": "running"},
                                    answer.run_id)
        response.headers["Cache-Status"] = _CACHE_STATUS[answer.source]
    return answered_with(wait, response)
