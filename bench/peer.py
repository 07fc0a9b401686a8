"""The afternoon peer: the registry as someone would write it in an afternoon.

Flask, a dict under a lock, a sliding TTL, ``jsonify`` of the transcript on every request, no
request ids, logs or metrics; run on gunicorn's defaults (``gunicorn bench.peer:app``: one
sync worker). The benchmark measures the service against it in the same run, as a user who
wonders whether all the care costs them anything would.
"""

from __future__ import annotations

import threading
import time

from flask import Flask
from flask import jsonify
from flask import request

from app.engine.pricing import PricingEngine

app = Flask(__name__)
engine = PricingEngine()
TTL_S = 3600
_lock = threading.Lock()
_runs: dict[tuple[str, int], dict] = {}
_by_id: dict[str, dict] = {}


@app.get("/runs/lookup")
def lookup():
    scenario_id = request.args.get("scenarioId")
    seed = request.args.get("seed", type=int)
    if not scenario_id or seed is None:
        return jsonify(type="BAD_INPUT", message="scenarioId and seed are required"), 400
    now = time.time()
    with _lock:
        run = _runs.get((scenario_id, seed))
        if run is not None and run["expires"] > now:
            run["expires"] = now + TTL_S
            return jsonify(runId=run["runId"], source="cache")
        run_id = f"run_{scenario_id}_{seed}_{int(now * 1000)}"
        run = {"runId": run_id, "events": list(engine.run(scenario_id, seed)), "expires": now + TTL_S}
        _runs[(scenario_id, seed)] = _by_id[run_id] = run
    return jsonify(runId=run_id, source="new")


@app.get("/runs/<run_id>/events")
def events(run_id):
    with _lock:
        run = _by_id.get(run_id)
    if run is None or run["expires"] <= time.time():
        return jsonify(type="NOT_FOUND", message="no such run"), 404
    return jsonify(runId=run_id, count=len(run["events"]), events=run["events"])
