"""GET /runs/lookup: get or create the run for a scenario and seed."""

from __future__ import annotations

from flask import Blueprint
from flask import request

from app.api import run_service
from app.logs import annotate_request
from app.schemas import LookupQuery
from app.schemas import load_or_bad_input

bp = Blueprint("lookup", __name__)
_lookup_query = LookupQuery()


@bp.get("/runs/lookup")
def lookup() -> dict[str, str]:
    """Get or create the run for a scenario and seed."""
    query = load_or_bad_input(_lookup_query, request.args)
    run_id, source = run_service().lookup(query["scenario_id"], query["seed"])
    annotate_request(source=source)
    return {"runId": run_id, "source": source}
