"""The determinism ledger on a real fleet: two gunicorn workers on a real redis-server, every web
process restarted between a key's runs, a drifting engine caught on verify and on re-run."""

from __future__ import annotations

import json

import pytest

from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import metric
from harness.servers import wait_until

pytestmark = pytest.mark.server


def lookup(server: Gunicorn, scenario: str) -> str:
    reply = http("GET", f"{server.url}/runs/lookup?scenarioId={scenario}&seed=1")
    assert reply.status == 200, reply.body
    return reply.json()["runId"]


def test_the_ledger_outlives_runs_and_every_web_process_and_catches_a_drifting_engine(redis_server, tmp_path):
    env = {"RUN_REGISTRY_URL": redis_server.url, "RUN_REGISTRY_REDIS_PREFIX": f"ledger-{id(tmp_path)}:",
           "RUN_REGISTRY_ENGINE": "harness.fakes:DriftingEngine", "RUN_REGISTRY_TTL_MIN": "0.01",
           "WEB_CONCURRENCY": "2"}
    with Gunicorn(tmp_path / "before.log", env=env) as before:
        steady, drifting = lookup(before, "steady"), lookup(before, "drift")
        verified = http("POST", f"{before.url}/runs/{drifting}/verify").json()
        recorded = {run_id: http("GET", f"{before.url}/runs/{run_id}").json() for run_id in (steady, drifting)}
    assert verified["reproducible"] is False and verified["determinism"]["status"] == "diverged"

    with Gunicorn(tmp_path / "after.log", env=env) as after:  # every web process is a new one
        wait_until(lambda: all(http("GET", f"{after.url}/runs/{run_id}").status == 404 for run_id in recorded),
                   timeout=5, every=0.05)  # both runs expired (TTL 0.6 s): only the ledger remembers them
        steady_again, drifting_again = lookup(after, "steady"), lookup(after, "drift")
        shown = {run_id: http("GET", f"{after.url}/runs/{run_id}").json() for run_id in (steady_again, drifting_again)}
        ledger = http("GET", f"{after.url}/registry/determinism").json()
        scrapes = [http("GET", f"{after.url}/metrics").body.decode() for _ in range(4)]  # whichever worker answers
        log = after.log()

    assert steady_again != steady and drifting_again != drifting
    assert shown[steady_again]["determinism"] == {"status": "reproduced", "checks": 1, "divergences": 0, "reference": {
        "runId": steady, "eventsSha256": recorded[steady]["eventsSha256"], "createdAt": recorded[steady]["createdAt"]}}
    assert shown[drifting_again]["determinism"] == {
        "status": "diverged", "checks": 2, "divergences": 2,
        "reference": {"runId": drifting, "eventsSha256": recorded[drifting]["eventsSha256"],
                      "createdAt": recorded[drifting]["createdAt"]}}
    assert (ledger["keys"], ledger["checks"], ledger["reproduced"], ledger["diverged"]) == (2, 3, 1, 2)
    assert [(entry["runId"], entry["eventsSha256"]) for entry in ledger["divergences"]] == [
        (drifting_again, shown[drifting_again]["eventsSha256"]), (drifting, verified["replayedSha256"])]
    assert all(entry["reference"] == {"runId": drifting, "eventsSha256": recorded[drifting]["eventsSha256"]}
               and entry["scenarioId"] == "drift" and entry["engineCodeHash"] == "gunicorn-test"
               for entry in ledger["divergences"])
    for scrape in scrapes:
        assert metric(scrape, 'run_registry_determinism_checks_total{result="diverged"}') == 2
        assert metric(scrape, 'run_registry_determinism_checks_total{result="reproduced"}') == 1
    [warning] = [json.loads(line) for line in log.splitlines() if '"determinism: ' in line]
    assert warning["level"] == "WARNING" and warning["runId"] == drifting_again
    assert warning["referenceRunId"] == drifting and warning["referenceSha256"] == recorded[drifting]["eventsSha256"]
