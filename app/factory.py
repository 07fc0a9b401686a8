"""create_app(): settings -> engine -> services -> metrics -> errors -> blueprints -> middleware."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask
from flask import Response
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from app.access import Access
from app.config import MAX_BODY_BYTES
from app.config import Settings
from app.config import load_settings
from app.engine import as_engine
from app.engine import load_engine
from app.engine.base import Engine
from app.engine.base import ScenarioEngine
from app.engine.identity import CodeHash
from app.errors import register_error_handlers
from app.evidence.keys import EvidenceKeys
from app.evidence.service import EvidenceService
from app.evidence.transcripts import TranscriptCache
from app.logs import AccessLog
from app.logs import register_request_logging
from app.metrics import Metrics
from app.openapi import build_openapi
from app.registry import Registry
from app.registry import make_limit_storage
from app.registry import make_registry
from app.runs.execution import Execution
from app.runs.execution import LocalExecution
from app.runs.execution import QueuedExecution
from app.runs.execution import queue_key
from app.runs.gate import RunGate
from app.runs.limits import NewRunLimit
from app.runs.operations import OperationsService
from app.runs.service import RunService
from app.runs.verification import VerificationService

STDOUT = 1  # the process' standard output, where gunicorn and twelve-factor hosts collect logs


def create_app(
    settings: Settings | None = None, engine: Engine | ScenarioEngine | None = None, registry: Registry | None = None
) -> Flask:
    """Build a wired app: wsgi.py passes nothing; tests pass settings and may pass an engine (of
    any kind, or a Python engine object), or a registry (two apps sharing one registry are two
    deploys of one fleet).

    :raises ConfigError: a setting is invalid or the engine cannot be loaded.
    """
    settings = settings or load_settings(os.environ)
    app = RegistryFlask(__name__)
    # "/runs//events" is no route: werkzeug would answer it with an HTML redirect to "/runs/events".
    app.url_map.merge_slashes = False
    app.json = StrictJSONProvider(app)
    app.json.ensure_ascii = False
    app.json.sort_keys = False  # bodies read in the documented order
    engine = as_engine(engine) if engine is not None else load_engine(settings)
    register_services(app, settings, engine, registry or make_registry(settings))
    metrics = Metrics(app.extensions["operations_service"].fleet_figures, settings.metrics_dir)
    app.extensions["access"] = Access(settings.api_keys, settings.anonymous_scopes)
    app.extensions["metrics"] = metrics
    register_error_handlers(app)
    register_blueprints(app)
    app.extensions["openapi"] = build_openapi(app)
    access_log = AccessLog(STDOUT if settings.access_log else None)
    register_request_logging(app, on_answered=metrics.request_answered, access_log=access_log)
    if settings.trusted_proxies:  # outermost, so the log and the app see the client's address
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops)  # type: ignore[method-assign]
    return app


def register_services(app: Flask, settings: Settings, engine: Engine, registry: Registry) -> None:
    """The four services, made from the parts they share: the registry, the engine and its code
    hash, how runs execute, the gate that admits them, and the cache of done runs' transcripts."""
    code_hash = CodeHash(settings)
    gate = RunGate(engine, code_hash, NewRunLimit(settings.new_runs_per_minute, make_limit_storage(settings)))
    execution: Execution = (
        QueuedExecution(registry, settings, queue_key(engine, code_hash)) if settings.execution == "queue"
        else LocalExecution(registry, engine, settings)
    )
    # Done runs' bodies, replays, CSVs, packs and comparison facts kept per process
    # (RUN_REGISTRY_TRANSCRIPT_CACHE_MB): the default engine's come to about 48 KB a run, so 32 MiB
    # holds the 700 or so runs being read at any time.
    transcripts = TranscriptCache(settings.transcript_cache_mb * 2**20)
    runs = RunService(registry, engine, settings, execution=execution, transcripts=transcripts, gate=gate)
    evidence = EvidenceService(transcripts, EvidenceKeys(settings.signing_key, settings.previous_public_keys))
    evidence.announce_signing_key()
    app.extensions["run_service"] = runs
    app.extensions["evidence_service"] = evidence
    app.extensions["verification_service"] = VerificationService(runs, registry, gate, execution, transcripts)
    app.extensions["operations_service"] = OperationsService(registry, engine, settings, execution, code_hash)


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing NaN and infinities (which JSON has not: Python writes ``-Infinity``,
    and clients fail to parse the body). What computes a number makes it finite or null; this
    makes a slip a 500 in the log, never a body no client can read."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(obj, allow_nan=False, **kwargs)


class RegistryFlask(Flask):
    """Flask, answering OPTIONS as the contract answers everything: no HTML, not even an empty page."""

    def make_default_options_response(self) -> Response:
        allowed = super().make_default_options_response().allow
        response = Response(status=204, headers={"Allow": ", ".join(sorted(allowed))})
        del response.headers["Content-Type"]  # no body, so no type (werkzeug would say text/html)
        return response


def register_blueprints(app: Flask) -> None:
    """Attach every endpoint; imported here so nothing else imports the blueprints. The routes
    that take a body (compare, verify) check it first (their blueprints' before_request)."""
    from app.api import compare
    from app.api import events
    from app.api import evidence
    from app.api import lookup
    from app.api import ops
    from app.api import pages
    from app.api import runs

    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    for blueprint in (lookup.bp, runs.bp, events.bp, evidence.bp, evidence.verification_bp, compare.bp, ops.bp,
                      pages.bp):
        app.register_blueprint(blueprint)
    if app.extensions["access"].enabled:  # without keys the views are as they are: no cost at all
        from app.api import guard_views

        guard_views(app, app.extensions["access"])
