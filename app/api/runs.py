"""GET /runs: the runs that can be read, newest first, a page at a time."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request

from app.api import determinism_body
from app.api import requires
from app.api import run_service
from app.models import ListedRun
from app.schemas import RunsQuery
from app.schemas import load_or_bad_input

bp = Blueprint("runs", __name__)
_runs_query = RunsQuery()


@bp.get("/runs")
@requires("read")
def list_runs() -> Response:
    """The runs that can be read (running, done, failed and still kept), newest first.
    ---
    get:
      parameters:
      - {in: query, schema: RunsQuery}
      responses:
        '200':
          description: A page of runs, and the cursor of the next (null after the oldest)
          content: {application/json: {schema: RunsPage}}
        '400': BadInput
        '503': Unavailable
    """
    query = load_or_bad_input(_runs_query, request.args)
    page = run_service().runs(query["limit"], query["cursor"])
    response = jsonify({"runs": [_listed(run) for run in page.runs], "next": page.next})
    response.headers["Cache-Control"] = "no-cache"  # a new run changes it: ask each time
    return response


def _listed(run: ListedRun) -> dict[str, Any]:
    return {
        "runId": run.run_id, "scenarioId": run.scenario_id, "seed": run.seed, "status": run.status,
        "createdAt": run.created_at,
        "determinism": determinism_body(run.determinism) if run.status == "done" else None,
    }
