"""GET /runs/<runId> and /runs/<runId>/events: a run's metadata and its transcript."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint
from flask import Response

from app.api import run_service

bp = Blueprint("events", __name__)


@bp.get("/runs/<run_id>")
def show_run(run_id: str) -> dict[str, Any]:
    """The run's metadata; reading it neither renews nor refreshes the run."""
    live = run_service().run(run_id)
    record = live.record
    return {
        "runId": record.run_id,
        "scenarioId": record.scenario_id,
        "seed": record.seed,
        "engine": {"name": record.engine_name, "version": record.engine_version},
        "engineCodeHash": record.engine_code_hash,
        "cacheKey": record.cache_key,
        "createdAt": record.created_at,
        "expiresAt": live.expires_at,
        "hits": live.hits,
        "count": record.event_count,
        "eventsSha256": record.events_sha256,
    }


@bp.get("/runs/<run_id>/events")
def list_events(run_id: str) -> Response:
    """The recorded transcript, served from its stored bytes without re-encoding."""
    record = run_service().run(run_id).record
    body = b"".join((
        b'{"runId":', json.dumps(record.run_id).encode(),
        b',"events":', record.events_json,
        b',"count":', str(record.event_count).encode(), b"}",
    ))
    return Response(body, mimetype="application/json")
