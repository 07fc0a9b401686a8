"""GET /runs/lookup: get or create the run for a scenario and seed."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import request

from app.api import client_address
from app.api import run_service
from app.logs import annotate_request
from app.schemas import lookup_query

bp = Blueprint("lookup", __name__)


@bp.get("/runs/lookup")
def lookup() -> Response:
    """Get or create the run for a scenario and seed."""
    scenario_id, seed = lookup_query(request.query_string)
    run_id, source = run_service().lookup(scenario_id, seed, client_address())
    annotate_request(source=source)
    # The hot path, written directly rather than through a JSON encoder: a runId is letters,
    # digits and ._- (the scenarioId's alphabet) and the source a known word, nothing to escape.
    return Response(f'{{"runId":"{run_id}","source":"{source}"}}', mimetype="application/json")
