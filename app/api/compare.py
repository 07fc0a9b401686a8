"""POST /compare: two runs, looked up (or created), side by side."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import Response
from flask import jsonify

from app.api import answered_with
from app.api import bound_request_body
from app.api import caller
from app.api import json_body
from app.api import preferred_wait
from app.api import refuse_cross_site_posts
from app.api import requires
from app.api import run_service
from app.api import verification_service
from app.evidence.diff import MetricDelta
from app.models import RunRecord
from app.schemas import CompareBody
from app.schemas import load_or_bad_input

bp = Blueprint("compare", __name__)
bp.before_request(bound_request_body)
bp.before_request(refuse_cross_site_posts)
_compare_body = CompareBody()


@bp.post("/compare")
@requires("read")
def compare() -> Response:
    """Look both runs up (get or create) and diff their transcripts and reports.
    ---
    post:
      parameters: [Prefer]
      requestBody:
        required: true
        content: {application/json: {schema: CompareBody}}
      responses:
        '200':
          description: Both runs and their diff
          content: {application/json: {schema: CompareResponse}}
        '202': Pending
        '400': BadInput
        '403': Forbidden
        '404': NotFound
        '413': TooLarge
        '415': NotJson
        '429': RateLimited
        '500': EngineError
        '503': Unavailable
    """
    body = load_or_bad_input(_compare_body, json_body())
    wait = preferred_wait(run_service())
    result = verification_service().compare(
        (body["left"]["scenario_id"], body["left"]["seed"]),
        (body["right"]["scenario_id"], body["right"]["seed"]),
        caller(),
        wait.seconds,
        start=body["start"],
    )
    diff = result.diff
    return answered_with(wait, jsonify({
        "left": _side(result.left, result.left_source),
        "right": _side(result.right, result.right_source),
        "diff": {
            "identical": diff.identical,
            "firstDifference": diff.first_difference,
            "tokens": {"left": diff.left_tokens, "right": diff.right_tokens,
                       "delta": diff.right_tokens - diff.left_tokens},
            "report": {name: _metric(metric) for name, metric in diff.metrics.items()},
        },
    }))


def _side(record: RunRecord, source: str) -> dict[str, Any]:
    return {
        "runId": record.run_id,
        "source": source,
        "scenarioId": record.identity.scenario_id,
        "seed": record.identity.seed,
        "count": record.event_count,
        "eventsSha256": record.events_sha256,
    }


def _metric(metric: MetricDelta) -> dict[str, Any]:
    return {"left": metric.left, "right": metric.right, "delta": metric.delta}
