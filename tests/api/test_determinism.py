"""The determinism ledger through the API (docs/api.md, "The determinism ledger"), on the embedded
registry; tests/registry/contract.py holds both backends to it, test_redis_app.py a real fleet."""

from __future__ import annotations

import logging
from datetime import timedelta

from app import create_app
from harness.fakes import DriftingEngine
from harness.fakes import FakeEngine
from harness.servers import metric
from tests.conftest import test_settings


def lookup(client, scenario: str = "a", seed: int = 1) -> str:
    return client.get(f"/runs/lookup?scenarioId={scenario}&seed={seed}").get_json()["runId"]


def determinism(client, run_id: str) -> dict:
    return client.get(f"/runs/{run_id}").get_json()["determinism"]


def test_a_re_run_after_expiry_reproduces_the_keys_first_transcript(frozen):
    client = create_app(test_settings(ttl_minutes=1), engine=FakeEngine()).test_client()
    first = lookup(client)
    reference = {"runId": first, "eventsSha256": client.get(f"/runs/{first}").get_json()["eventsSha256"],
                 "createdAt": int(first.rsplit("_", 1)[1])}
    assert determinism(client, first) == {"status": "unchecked", "checks": 0, "divergences": 0,
                                          "reference": reference}
    frozen.tick(timedelta(minutes=1))
    second = lookup(client)
    assert second != first
    assert determinism(client, second) == {"status": "reproduced", "checks": 1, "divergences": 0,
                                           "reference": reference}
    body = client.get("/registry/determinism").get_json()
    assert body == {"keys": 1, "checks": 1, "reproduced": 1, "diverged": 0, "divergences": []}


def test_a_diverging_engine_is_caught_on_verify_and_on_re_run_listed_and_counted(frozen, caplog):
    client = create_app(test_settings(ttl_minutes=1), engine=DriftingEngine()).test_client()
    first = lookup(client, "drift-a")
    recorded = client.get(f"/runs/{first}").get_json()
    caplog.set_level(logging.WARNING, logger="app.runs.runner")
    verified = client.post(f"/runs/{first}/verify").get_json()
    assert verified["reproducible"] is False
    assert verified["determinism"]["status"] == "diverged" and verified["determinism"]["divergences"] == 1
    frozen.tick(timedelta(minutes=1))
    second = lookup(client, "drift-a")
    rerun = client.get(f"/runs/{second}").get_json()
    assert rerun["determinism"] == {"status": "diverged", "checks": 2, "divergences": 2, "reference": {
        "runId": first, "eventsSha256": recorded["eventsSha256"], "createdAt": recorded["createdAt"]}}
    lookup(client, "steady")  # a deterministic key beside it: unchecked, and no divergence
    body = client.get("/registry/determinism").get_json()
    assert (body["keys"], body["checks"], body["reproduced"], body["diverged"]) == (2, 2, 0, 2)
    newest, oldest = body["divergences"]
    assert newest == {
        "scenarioId": "drift-a", "seed": 1, "engineCodeHash": "test-code-hash", "cacheKey": recorded["cacheKey"],
        "reference": {"runId": first, "eventsSha256": recorded["eventsSha256"]},
        "runId": second, "eventsSha256": rerun["eventsSha256"], "at": newest["at"],
    }
    assert oldest["runId"] == first and oldest["eventsSha256"] == verified["replayedSha256"]
    assert newest["at"] - oldest["at"] == 60_000
    scrape = client.get("/metrics").get_data(as_text=True)
    assert metric(scrape, 'run_registry_determinism_checks_total{result="diverged"}') == 2
    assert metric(scrape, 'run_registry_determinism_checks_total{result="reproduced"}') == 0
    assert metric(scrape, "run_registry_determinism_keys") == 2
    warnings = [record.getMessage() for record in caplog.records if "determinism" in record.getMessage()]
    assert len(warnings) == 2
    for line, (run_id, digest) in zip(warnings, ((first, verified["replayedSha256"]),
                                                 (second, rerun["eventsSha256"])), strict=True):
        assert f"run {run_id} has eventsSha256 {digest}" in line
        assert f"the key's reference run {first} has {recorded['eventsSha256']}" in line
        assert recorded["cacheKey"] in line


def test_a_forgotten_key_starts_afresh(frozen):
    client = create_app(test_settings(ttl_minutes=1, ledger_days=1), engine=DriftingEngine()).test_client()
    lookup(client, "drift-a")
    frozen.tick(timedelta(days=1))
    second = lookup(client, "drift-a")
    assert determinism(client, second) == {"status": "unchecked", "checks": 0, "divergences": 0, "reference": {
        "runId": second, "eventsSha256": client.get(f"/runs/{second}").get_json()["eventsSha256"],
        "createdAt": int(second.rsplit("_", 1)[1])}}
    assert client.get("/registry/determinism").get_json()["diverged"] == 0


def test_the_ledger_holds_its_cap_under_a_flood_of_keys(frozen):
    client = create_app(test_settings(ledger_max_keys=50, max_entries=20), engine=FakeEngine()).test_client()
    for seed in range(300):
        lookup(client, "flood", seed)
    assert client.get("/registry/determinism").get_json()["keys"] == 50
    assert determinism(client, lookup(client, "flood", 299))["reference"] is not None
    evicted_and_forgotten = lookup(client, "flood", 0)  # its run evicted, its key forgotten: afresh
    assert determinism(client, evicted_and_forgotten)["reference"]["runId"] == evicted_and_forgotten


def test_the_ledger_entry_of_a_key_is_what_the_metadata_shows_for_each_of_its_runs():
    """The status follows the key: a run that reproduced the reference reads "diverged" once any
    check of its key diverged, so that no run of a drifting key reads as trustworthy."""
    client = create_app(test_settings(), engine=DriftingEngine()).test_client()
    run_id = lookup(client, "drift-b")
    client.post(f"/runs/{run_id}/verify")
    shown = determinism(client, run_id)
    assert shown["status"] == "diverged" and shown["reference"]["runId"] == run_id
    assert shown["reference"]["eventsSha256"] == client.get(f"/runs/{run_id}").get_json()["eventsSha256"]


def test_the_ledgers_metrics_parse_as_prometheus_text(frozen):
    from prometheus_client.parser import text_string_to_metric_families

    client = create_app(test_settings(), engine=DriftingEngine()).test_client()
    client.post(f"/runs/{lookup(client, 'drift-c')}/verify")
    families = {family.name: family for family in text_string_to_metric_families(
        client.get("/metrics").get_data(as_text=True))}
    checks = families["run_registry_determinism_checks"]
    assert checks.type == "counter"
    assert {(sample.labels["result"], sample.value) for sample in checks.samples
            if sample.name.endswith("_total")} == {("reproduced", 0.0), ("diverged", 1.0)}
    assert families["run_registry_determinism_keys"].type == "gauge"
