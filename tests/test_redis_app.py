"""The service on the Redis backend, in-process: instances agree, outages are 503s."""

from __future__ import annotations

import gzip
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import create_app
from app.registry import redis_registry
from harness.fakes import FakeEngine
from harness.fakes import ScenarioPacedEngine
from harness.fakes import SteppedEngine
from harness.servers import RedisServer
from harness.servers import free_port
from harness.servers import wait_until
from tests.conftest import test_settings

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
def test_redis_down_is_a_json_503(method, path, capfd):
    client = redis_app(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200).test_client()
    capfd.readouterr()
    response = client.open(path, method=method)
    assert response.status_code == 503
    assert response.get_json() == {"type": "UNAVAILABLE",
                                   "message": "The run registry is unavailable; try again shortly"}
    assert response.headers["Retry-After"] == "1"
    # The request line says what failed; the body does not.
    [line] = [json.loads(line) for line in capfd.readouterr().out.splitlines() if '"app.request"' in line]
    assert line["status"] == 503 and line["cause"].endswith("ConnectionError")


def test_compare_with_redis_down_is_a_json_503():
    client = redis_app(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_ms=200).test_client()
    response = client.post("/compare", json={"left": {"scenarioId": "a", "seed": 1},
                                             "right": {"scenarioId": "b", "seed": 1}})
    assert response.status_code == 503 and response.get_json()["type"] == "UNAVAILABLE"


def test_the_new_run_limit_holds_across_the_fleet_under_its_own_prefix(redis_url, redis_server):
    web = [redis_app(redis_url, new_runs_per_minute=3).test_client() for _ in range(2)]
    statuses = [web[seed % 2].get(f"/runs/lookup?scenarioId=s&seed={seed}").status_code for seed in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    limit_keys = redis_server.client().keys("run-registry:limits*")
    assert limit_keys and all(b"loopback" in name for name in limit_keys)  # 127.0.0.1: one client, loopback


def test_a_transcript_that_does_not_match_its_digest_is_not_served_and_the_key_runs_anew(
        redis_url, redis_server, caplog):
    client = redis_app(redis_url).test_client()
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    run_key = f"run-registry:run:{run_id}"
    redis = redis_server.client()
    body = gzip.decompress(redis.hget(run_key, "bodyGzip")).replace(b"session_", b"sessiom_", 1)
    redis.hset(run_key, "bodyGzip", gzip.compress(body, mtime=0))
    fresh = redis_app(redis_url).test_client()  # a process that has not read it yet
    answers = [fresh.get(f"/runs/{run_id}/events") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [404] * 3
    assert answers[0].get_json() == {"type": "BAD_INPUT", "message": f"Run {run_id} not found"}
    defects = [record for record in caplog.records if "do not match its eventsSha256" in record.getMessage()]
    assert len(defects) == 1
    again = fresh.get("/runs/lookup?scenarioId=a&seed=1").get_json()
    assert again["source"] == "new" and again["runId"] != run_id


def test_a_transcript_that_decompresses_without_bound_is_not_served(redis_url, redis_server):
    client = redis_app(redis_url).test_client()
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    bomb = gzip.compress(b"[" + b" " * (40 * 1024 * 1024), compresslevel=9, mtime=0)  # 40 MiB from ~40 KB
    redis_server.client().hset(f"run-registry:run:{run_id}", "bodyGzip", bomb)
    fresh = redis_app(redis_url).test_client()
    assert fresh.get(f"/runs/{run_id}/events", headers={"Accept-Encoding": "gzip"}).status_code == 404


def test_on_redis_a_registry_full_of_running_runs_answers_503_and_frees_up(redis_url):
    engine = SteppedEngine()
    client = redis_app(redis_url, engine=engine, max_entries=1).test_client()
    started = client.get("/runs/lookup?scenarioId=r&seed=1", headers={"Prefer": "respond-async"})
    assert started.status_code == 202
    full = client.get("/runs/lookup?scenarioId=r&seed=2")
    assert (full.status_code, full.headers["Retry-After"], full.get_json()["type"]) == (503, "1", "UNAVAILABLE")
    engine.step(5)
    assert client.get("/runs/lookup?scenarioId=r&seed=1").status_code == 200
    engine.step(5)
    assert client.get("/runs/lookup?scenarioId=r&seed=2").get_json()["source"] == "new"  # the done run is evicted


def test_a_lookup_waiting_on_a_run_redis_lost_is_a_503_to_look_it_up_again(redis_url, redis_server, monkeypatch):
    """Redis restarted without its data mid-run: the waiting lookup is told to retry (503), not
    that the engine failed (500), and the next lookup starts the run anew."""
    monkeypatch.setattr(redis_registry, "FOLLOW_BLOCK_MS", 100)  # notice a quiet stream sooner
    client = redis_app(redis_url, engine=ScenarioPacedEngine()).test_client()
    lookup = "/runs/lookup?scenarioId=paced-200-20&seed=1"  # about 4.5 s
    first = client.get(lookup, headers={"Prefer": "respond-async"}).get_json()["runId"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.get, lookup, headers={"Prefer": "wait=20"})
        wait_until(lambda: client.get(f"/runs/{first}").get_json()["count"] >= 1)
        redis_server.client().flushall()
        answer = waiting.result(timeout=30)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert answer.get_json() == {"type": "UNAVAILABLE",
                                 "message": "The run is no longer in the registry; look it up again"}
    again = client.get(lookup, headers={"Prefer": "respond-async"}).get_json()
    assert again["source"] == "new" and again["runId"] != first


def test_a_redis_that_stalls_for_a_second_and_a_half_fails_no_run(tmp_path):
    """kill -STOP of redis-server mid-run: appends time out, and land once Redis goes on; their
    retries must be recognised, and the run end done, whole, as if nothing happened."""
    with RedisServer(tmp_path) as server:
        client = redis_app(server.url, engine=ScenarioPacedEngine()).test_client()
        lookup = "/runs/lookup?scenarioId=paced-20-100&seed=1"  # about 2 s
        run_id = client.get(lookup, headers={"Prefer": "respond-async"}).get_json()["runId"]
        wait_until(lambda: client.get(f"/runs/{run_id}").get_json()["count"] >= 10)
        server.stop(signal.SIGSTOP)
        time.sleep(1.5)  # the stall itself: Redis's own clock, which nothing here can move
        server.stop(signal.SIGCONT)
        wait_until(lambda: client.get(f"/runs/{run_id}").get_json()["status"] != "running", timeout=30, every=0.05)
        run = client.get(f"/runs/{run_id}").get_json()
        events = client.get(f"/runs/{run_id}/events").get_json()["events"]
    assert (run["status"], run["count"]) == ("done", 103)
    assert [event["data"].get("tokenIndex") for event in events[1:101]] == list(range(1, 101))
    assert [event["type"] for event in events] == ["start"] + ["token"] * 100 + ["report", "done"]
