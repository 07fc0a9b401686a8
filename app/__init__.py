"""The Run Registry: a Flask service that runs each deterministic scenario once and keeps its transcript."""

from __future__ import annotations

import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import Settings
from app.config import load_settings
from app.engine import load_engine
from app.engine.base import Engine
from app.errors import register_error_handlers
from app.logs import AccessLog
from app.logs import register_request_logging
from app.metrics import Metrics
from app.openapi import build_openapi
from app.registry import make_registry
from app.service import RunService

MAX_BODY_BYTES = 64 * 1024
STDOUT = 1  # the process' standard output, where gunicorn and twelve-factor hosts collect logs


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    """Build a wired app: wsgi.py passes nothing; tests pass settings and may pass an engine.

    :raises ConfigError: a setting is invalid or the engine cannot be loaded.
    """
    settings = settings or load_settings(os.environ)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # "/runs//events" is no route: werkzeug would answer it with an HTML redirect to "/runs/events".
    app.url_map.merge_slashes = False
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]  # bodies read in the documented order
    engine = engine or load_engine(settings.engine)
    metrics = Metrics(lambda: service.stats_report().stats, settings.metrics_dir)
    service = RunService(make_registry(settings), engine, settings, observer=metrics)
    app.extensions["settings"] = settings
    app.extensions["run_service"] = service
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


def register_blueprints(app: Flask) -> None:
    """Attach every endpoint; imported here so nothing else imports the blueprints."""
    from app.api import compare
    from app.api import events
    from app.api import evidence
    from app.api import lookup
    from app.api import ops

    for blueprint in (lookup.bp, events.bp, evidence.bp, compare.bp, ops.bp):
        app.register_blueprint(blueprint)
