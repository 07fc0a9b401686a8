"""Operations: liveness, readiness, registry statistics, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app

from app.api import operations_service
from app.api import requires
from app.metrics import CONTENT_TYPE
from app.registry.ledger import LATEST_DIVERGENCES

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@requires()
def healthz() -> dict[str, str]:
    """Alive: the process answers. Asks nothing of the backend.
    ---
    get:
      responses:
        '200':
          description: The process answers
          content: {application/json: {schema: HealthResponse}}
    """
    return {"status": "ok"}


@bp.get("/readyz")
@requires()
def readyz() -> dict[str, Any]:
    """Ready: the registry backend answers (503 UNAVAILABLE when it does not).
    ---
    get:
      responses:
        '200':
          description: Ready, with the engine's identity (and the workers, with queue execution)
          content: {application/json: {schema: ReadinessResponse}}
        '503': Unavailable
    """
    ready = operations_service().readiness()
    body: dict[str, Any] = {
        "status": "ready",
        "backend": ready.backend,
        "engine": {"kind": ready.engine_kind, "name": ready.engine_name, "version": ready.engine_version},
        "engineCodeHash": ready.engine_code_hash,
        "execution": ready.execution,
    }
    if ready.workers is not None:
        body["workers"] = ready.workers
    return body


@bp.get("/registry/stats")
@requires("ops")
def registry_stats() -> dict[str, Any]:
    """Entries, lookups and engine runs; with Redis, for every worker and host.
    ---
    get:
      responses:
        '200':
          description: The statistics
          content: {application/json: {schema: StatsResponse}}
        '503': Unavailable
    """
    report = operations_service().stats_report()
    stats = report.stats
    lookups = stats.hits + stats.misses
    return {
        "backend": report.backend,
        "total_entries": stats.total_entries,
        "ttl_minutes": report.ttl_minutes,
        "entries_by_scenario": stats.entries_by_scenario,
        "scenario_count": stats.scenario_count,
        "entries_in_unlisted_scenarios": stats.total_entries - sum(stats.entries_by_scenario.values()),
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_ratio": round(stats.hits / lookups, 4) if lookups else None,
        "evictions": stats.evictions,
        "expirations": stats.expirations,
        "engine_executions": stats.engine_runs,
        "engine_failures": stats.engine_failures,
        "engine_mean_ms": round(stats.engine_ms_total / stats.engine_runs, 3) if stats.engine_runs else None,
        "running": stats.running,
        "execution": report.execution,
        **({"workers": report.workers} if report.workers is not None else {}),
    }


@bp.get("/registry/determinism")
@requires("ops")
def registry_determinism() -> dict[str, Any]:
    """The determinism ledger: keys, checks of re-runs and verifies against each key's first transcript,
    the latest divergences.
    ---
    get:
      responses:
        '200':
          description: With Redis, the fleet's figures
          content: {application/json: {schema: DeterminismResponse}}
        '503': Unavailable
    """
    figures = operations_service().ledger_figures(LATEST_DIVERGENCES)
    return {
        "keys": figures.keys,
        "checks": figures.checks,
        "reproduced": figures.reproduced,
        "diverged": figures.diverged,
        "divergences": [
            {
                "scenarioId": divergence.scenario_id, "seed": divergence.seed,
                "engineCodeHash": divergence.engine_code_hash, "cacheKey": divergence.cache_key,
                "reference": {"runId": divergence.reference_run_id, "eventsSha256": divergence.reference_sha256},
                "runId": divergence.run_id, "eventsSha256": divergence.events_sha256, "at": divergence.at,
            }
            for divergence in figures.divergences
        ],
    }


@bp.get("/metrics")
@requires("ops")
def metrics() -> Response:
    """Prometheus metrics, in the text exposition format.
    ---
    get:
      responses:
        '200':
          description: Text exposition format 0.0.4
          content: {text/plain: {schema: {type: string}}}
    """
    return Response(current_app.extensions["metrics"].render(), content_type=CONTENT_TYPE)


@bp.get("/openapi.json")
@requires("read")
def openapi() -> dict[str, Any]:
    """This document: OpenAPI 3, derived from the routes, their docstrings and the marshmallow schemas.
    ---
    get:
      responses:
        '200':
          description: OpenAPI 3.0
          content: {application/json: {schema: {type: object}}}
    """
    document: dict[str, Any] = current_app.extensions["openapi"]
    return document
