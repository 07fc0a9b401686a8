"""HTTP blueprints: the only code that touches ``request``."""

from __future__ import annotations

from flask import current_app

from app.service import RunService


def run_service() -> RunService:
    """The app's wired service (see ``create_app``)."""
    service: RunService = current_app.extensions["run_service"]
    return service
