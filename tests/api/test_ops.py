"""Operations endpoints in-process: health, readiness, stats, metrics, OpenAPI, request logs, proxies."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from app import create_app
from app.access import open_caller
from app.openapi import build_openapi
from harness.fakes import FakeEngine
from harness.servers import free_port
from harness.servers import metric
from tests.conftest import test_settings


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_readyz_names_the_backend_and_engine(client):
    assert client.get("/readyz").get_json() == {
        "status": "ready", "backend": "memory",
        "engine": {"kind": "python", "name": "pricing-simulator", "version": "1.2.0"},
        "engineCodeHash": "test-code-hash",
        "execution": "local",
    }


def test_readyz_is_503_when_the_backend_does_not_answer():
    settings = test_settings(registry_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200)
    client = create_app(settings, engine=FakeEngine()).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["type"] == "UNAVAILABLE"
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_registry_stats_count_lookups_entries_and_engine_runs(settings):
    engine = FakeEngine()
    client = create_app(settings, engine=engine).test_client()
    assert client.get("/registry/stats").get_json()["hit_ratio"] is None
    for query in ("scenarioId=a&seed=1", "scenarioId=a&seed=1", "scenarioId=a&seed=1", "scenarioId=b&seed=1"):
        client.get(f"/runs/lookup?{query}")
    engine.failures = 1
    assert client.get("/runs/lookup?scenarioId=c&seed=1").status_code == 500
    stats = client.get("/registry/stats").get_json()
    engine_mean = stats.pop("engine_mean_ms")
    assert stats == {
        "backend": "memory", "total_entries": 2, "ttl_minutes": 60.0, "entries_by_scenario": {"a": 1, "b": 1},
        "scenario_count": 2, "entries_in_unlisted_scenarios": 0,
        "hits": 2, "misses": 3, "hit_ratio": 0.4, "evictions": 0, "expirations": 0,
        "engine_executions": 3, "engine_failures": 1, "running": 0, "execution": "local",
    }
    assert engine_mean >= 0


def test_metrics_in_prometheus_text_format(fake_client):
    for _ in range(3):
        fake_client.get("/runs/lookup?scenarioId=a&seed=1")
    fake_client.get("/runs/lookup?scenarioId=a&seed=bad")
    response = fake_client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert metric(text, 'run_registry_lookups_total{source="new"}') == 1
    assert metric(text, 'run_registry_lookups_total{source="cache"}') == 2
    assert metric(text, "run_registry_engine_executions_total") == 1
    assert metric(text, "run_registry_engine_failures_total") == 0
    assert metric(text, 'run_registry_engine_duration_seconds_count{outcome="succeeded"}') == 1
    assert metric(text, "run_registry_entries") == 1 and metric(text, "run_registry_backend_up") == 1
    assert metric(text, "run_registry_evictions_total") == 0
    assert metric(text, 'run_registry_http_request_duration_seconds_count'
                        '{endpoint="/runs/lookup",method="GET",status="200"}') == 3
    assert metric(text, 'run_registry_http_request_duration_seconds_count'
                        '{endpoint="/runs/lookup",method="GET",status="400"}') == 1
    assert "_created" not in text


def test_metrics_still_answer_when_the_backend_is_down():
    settings = test_settings(registry_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200)
    text = create_app(settings, engine=FakeEngine()).test_client().get("/metrics").get_data(as_text=True)
    assert metric(text, "run_registry_backend_up") == 0


def test_every_route_is_in_the_openapi_document(app, client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"] == "3.0.3"
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    routes = {
        (rule.rule.replace("<run_id>", "{run_id}"), method.lower())
        for rule in app.url_map.iter_rules() if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == routes
    lookup = document["paths"]["/runs/lookup"]["get"]
    parameters = [p.get("name", p.get("$ref")) for p in lookup["parameters"]]
    assert parameters == ["scenarioId", "seed", "#/components/parameters/Prefer"]  # derived from LookupQuery
    assert lookup["summary"].startswith("Get or start the run")  # the view's first docstring line
    assert set(document["components"]["schemas"]) >= {"Error", "LookupResponse", "RunMetadata", "CompareBody"}


def test_the_openapi_document_declares_the_bearer_scheme_and_each_operations_scopes(client):
    document = client.get("/openapi.json").get_json()
    assert document["components"]["securitySchemes"]["bearerKey"] == {**document["components"]["securitySchemes"][
        "bearerKey"], "type": "http", "scheme": "bearer"}
    assert document["security"] == [{"bearerKey": []}]
    scopes = {(path, method): operation.get("x-scopes", operation.get("security"))
              for path, operations in document["paths"].items() for method, operation in operations.items()}
    assert scopes == {
        ("/runs/lookup", "get"): ["read"], ("/runs", "get"): ["read"], ("/runs/{run_id}", "get"): ["read"],
        ("/runs/{run_id}/events", "get"): ["read"], ("/runs/{run_id}/replay", "get"): [],
        ("/runs/{run_id}/snapshot", "get"): ["read"], ("/runs/{run_id}/export.csv", "get"): ["read"],
        ("/runs/{run_id}/attestation", "get"): ["read"], ("/signing-keys", "get"): [],
        ("/runs/{run_id}/verify", "post"): ["read", "run"], ("/compare", "post"): ["read"],
        ("/healthz", "get"): [], ("/readyz", "get"): [], ("/registry/stats", "get"): ["ops"],
        ("/registry/determinism", "get"): ["ops"], ("/", "get"): [],
        ("/metrics", "get"): ["ops"], ("/openapi.json", "get"): ["read"], ("/favicon.ico", "get"): [],
    }
    secured = document["paths"]["/metrics"]["get"]["responses"]
    assert secured["401"] == {"$ref": "#/components/responses/Unauthorized"}


def test_a_route_without_documentation_stops_the_build():
    app = Flask(__name__)

    @app.get("/undocumented")
    def undocumented() -> str:
        """A view whose docstring has no operations."""
        return "x"

    with pytest.raises(RuntimeError, match="GET /undocumented"):
        build_openapi(app)


def request_lines(capfd) -> list[dict]:
    """The JSON request lines the app wrote to its standard output."""
    return [line for line in map(json.loads, capfd.readouterr().out.splitlines()) if line["logger"] == "app.request"]


def test_request_log_line_has_the_lookup_source_and_request_id(fake_client, capfd):
    capfd.readouterr()
    response = fake_client.get("/runs/lookup?scenarioId=a&seed=1", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    [line] = request_lines(capfd)
    assert set(line) == {"ts", "level", "logger", "message", "request_id", "method", "path", "status",
                         "duration_ms", "client", "source"}
    assert (line["message"], line["request_id"], line["method"], line["path"], line["status"], line["source"]) == (
        "GET /runs/lookup 200", "abc-123", "GET", "/runs/lookup?scenarioId=a&seed=1", 200, "new")
    assert line["client"] == "127.0.0.1" and line["level"] == "INFO"


def test_request_lines_can_be_switched_off(capfd):
    client = create_app(test_settings(access_log=False), engine=FakeEngine()).test_client()
    capfd.readouterr()
    client.get("/healthz")
    assert request_lines(capfd) == []


@pytest.mark.parametrize(("trusted", "client_address"), [(0, "127.0.0.1"), (1, "203.0.113.9")])
def test_forwarded_address_only_from_trusted_proxies(trusted, client_address, capfd):
    client = create_app(test_settings(trusted_proxies=trusted), engine=FakeEngine()).test_client()
    capfd.readouterr()
    client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    [line] = request_lines(capfd)
    assert line["client"] == client_address


def test_registry_stats_stay_small_however_many_scenarios():
    app = create_app(test_settings(max_entries=20_000), engine=FakeEngine())
    service = app.extensions["run_service"]
    for index in range(2_000):
        service.lookup(f"s{index:05d}".ljust(128, "x"), 1, open_caller("test-client"), 10)
    for seed in range(3):
        service.lookup("hot", seed, open_caller("test-client"), 10)
    response = app.test_client().get("/registry/stats")
    body = response.get_json()
    assert len(response.get_data()) < 5_000  # every scenario listed was 1.3 MB for 10,000 of them
    assert len(body["entries_by_scenario"]) == 20
    assert next(iter(body["entries_by_scenario"].items())) == ("hot", 3)
    assert (body["scenario_count"], body["total_entries"]) == (2_001, 2_003)
    assert body["entries_in_unlisted_scenarios"] == 2_003 - sum(body["entries_by_scenario"].values())


def test_a_scrape_asks_the_registry_for_counts_only(fake_client):
    fake_client.get("/runs/lookup?scenarioId=a&seed=1")
    text = fake_client.get("/metrics").get_data(as_text=True)
    assert "scenario" not in text and metric(text, "run_registry_entries") == 1
