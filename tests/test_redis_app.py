"""The service on the Redis backend, in-process: instances agree, outages are 503s."""

from __future__ import annotations

import pytest

from app import create_app
from tests.conftest import test_settings
from tests.fakes import FakeEngine
from tests.servers import free_port

pytestmark = pytest.mark.server


def redis_app(url, engine=None, **settings):
    return create_app(test_settings(registry_url=url, **settings), engine=engine or FakeEngine())


def test_two_instances_on_one_redis_agree_on_every_run_id(redis_url):
    clients = [redis_app(redis_url).test_client(), redis_app(redis_url).test_client()]
    answers = {}
    for round_ in range(3):
        for seed in range(10):
            client = clients[(seed + round_) % 2]
            body = client.get(f"/runs/lookup?scenarioId=shared&seed={seed}").get_json()
            answers.setdefault(seed, []).append(body)
    for seed, bodies in answers.items():
        assert [body["source"] for body in bodies] == ["new", "cache", "cache"], seed
        assert len({body["runId"] for body in bodies}) == 1, seed
    run_id = answers[0][0]["runId"]
    metadata = [client.get(f"/runs/{run_id}").get_json() for client in clients]
    assert metadata[0] == metadata[1] and metadata[0]["hits"] == 2
    events = [client.get(f"/runs/{run_id}/events").get_data() for client in clients]
    assert events[0] == events[1]


def test_every_endpoint_works_on_redis(redis_url):
    client = redis_app(redis_url).test_client()
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    for path in ("", "/events", "/export.csv", "/snapshot", "/replay"):
        assert client.get(f"/runs/{run_id}{path}").status_code == 200, path
    assert client.get(f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"}).status_code == 200
    assert client.post(f"/runs/{run_id}/verify").get_json()["reproducible"] is True
    sides = {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 2}}
    body = client.post("/compare", json=sides)
    assert body.get_json()["left"] == {**body.get_json()["left"], "runId": run_id, "source": "cache"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/runs/lookup?scenarioId=a&seed=1"), ("GET", "/runs/run_a_1_1"), ("GET", "/runs/run_a_1_1/events"),
     ("GET", "/runs/run_a_1_1/snapshot"), ("POST", "/runs/run_a_1_1/verify")],
)
def test_redis_down_is_a_json_503(method, path):
    client = redis_app(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200).test_client()
    response = client.open(path, method=method)
    assert response.status_code == 503
    assert response.get_json() == {"type": "UNAVAILABLE",
                                   "message": "The run registry is unavailable; try again shortly"}
    assert response.headers["Retry-After"] == "1"


def test_compare_with_redis_down_is_a_json_503():
    client = redis_app(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200).test_client()
    response = client.post("/compare", json={"left": {"scenarioId": "a", "seed": 1},
                                             "right": {"scenarioId": "b", "seed": 1}})
    assert response.status_code == 503 and response.get_json()["type"] == "UNAVAILABLE"
