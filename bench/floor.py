"""The floor: a bare Flask app whose routes answer with the service's own recorded bytes.

No validation, no registry, no logging: what Flask and gunicorn cost by themselves on the
same settings. ``BENCH_FLOOR_RESPONSES`` names the JSON file the benchmark recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask
from flask import Response
from flask import request

app = Flask(__name__)
_RECORDED = json.loads(Path(os.environ["BENCH_FLOOR_RESPONSES"]).read_text())


def _recorded(name: str) -> tuple[bytes, dict[str, str]]:
    return bytes.fromhex(_RECORDED[name]["body"]), _RECORDED[name]["headers"]


_LOOKUP, _METADATA, _EVENTS, _EVENTS_GZIP, _SSE, _CSV, _SNAPSHOT = (
    _recorded(name) for name in ("lookup", "metadata", "events", "events_gzip", "sse", "csv", "snapshot")
)


@app.get("/runs/lookup")
def lookup() -> Response:
    return Response(_LOOKUP[0], headers=_LOOKUP[1])


@app.get("/runs/<run_id>")
def metadata(run_id: str) -> Response:
    return Response(_METADATA[0], headers=_METADATA[1])


@app.get("/runs/<run_id>/events")
def events(run_id: str) -> Response:
    accept, encoding = request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
    body, headers = _SSE if "text/event-stream" in accept else _EVENTS_GZIP if "gzip" in encoding else _EVENTS
    return Response(body, headers=headers)


@app.get("/runs/<run_id>/export.csv")
def export_csv(run_id: str) -> Response:
    return Response(_CSV[0], headers=_CSV[1])


@app.get("/runs/<run_id>/snapshot")
def snapshot(run_id: str) -> Response:
    return Response(_SNAPSHOT[0], headers=_SNAPSHOT[1])
