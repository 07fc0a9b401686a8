"""HTTP blueprints: the only code that touches ``request``."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app
from flask import request

from app.errors import BadInput
from app.service import RunService


def run_service() -> RunService:
    """The app's wired service (see ``create_app``)."""
    service: RunService = current_app.extensions["run_service"]
    return service


def json_body() -> Any:
    """The request body parsed as JSON.

    :raises BadInput: it is not JSON, not UTF-8, or nested too deeply to parse.
    """
    if not request.is_json:
        raise BadInput("the body must be JSON, sent with Content-Type: application/json")
    try:
        # The body is already bounded by MAX_CONTENT_LENGTH (a 413 past it).
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError) as err:  # RecursionError: "[[[[..." thousands deep
        raise BadInput("the body is not valid JSON") from err
