"""GET /runs/<runId> and /runs/<runId>/events: metadata, transcript, digests, 404s."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from app import create_app
from harness.fakes import FakeEngine
from harness.fakes import transcript
from tests.conftest import test_settings


def new_run(client, query="scenarioId=a&seed=1"):
    return client.get(f"/runs/lookup?{query}").get_json()["runId"]


def canonical(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def test_events_are_the_recorded_transcript(fake_client):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/events")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == {"runId": run_id, "events": transcript("a", 1), "count": 5}


def test_default_engine_events_follow_the_contract(client):
    run_id = new_run(client, "scenarioId=pricing-v1&seed=42")
    body = client.get(f"/runs/{run_id}/events").get_json()
    events = body["events"]
    assert body["count"] == len(events)
    assert [e["type"] for e in events[:1] + events[-2:]] == ["start", "report", "done"]
    tokens = events[1:-2]
    assert {e["type"] for e in tokens} == {"token"}
    assert [e["data"]["tokenIndex"] for e in tokens] == list(range(1, len(tokens) + 1))
    assert tokens[0]["data"]["text"] == "Based"
    start, done = events[0]["data"], events[-1]["data"]
    assert start["scenarioId"] == "pricing-v1" and start["seed"] == 42
    assert start["sessionId"].startswith("session_")
    assert done == {"sessionId": start["sessionId"], "totalTokens": len(tokens)}
    report = events[-2]["data"]
    assert all(isinstance(v, int | float) for name, v in report.items() if name != "series")
    assert [series["name"] for series in report["series"]] == ["profit", "buyers"]
    assert all(len(series["points"]) == 7 and all(len(point) == 2 for point in series["points"])
               for series in report["series"])


def test_metadata_describes_the_run(fake_client, frozen):
    run_id = new_run(fake_client)
    fake_client.get("/runs/lookup?scenarioId=a&seed=1")
    fake_client.get("/runs/lookup?scenarioId=a&seed=1")
    response = fake_client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    created_at = int(run_id.rsplit("_", 1)[1])
    assert created_at == 1795694400000  # FROZEN_START in epoch milliseconds
    assert response.get_json() == {
        "runId": run_id,
        "scenarioId": "a",
        "seed": 1,
        "engine": {"name": "fake", "version": "1"},
        "engineCodeHash": "test-code-hash",
        "cacheKey": hashlib.sha256(b"a:1:test-code-hash").hexdigest(),
        "createdAt": created_at,
        "status": "done",
        "expiresAt": created_at + 60 * 60_000,
        "hits": 2,
        "count": 5,
        "eventsSha256": hashlib.sha256(canonical(transcript("a", 1))).hexdigest(),
        "determinism": {"status": "unchecked", "checks": 0, "divergences": 0, "reference": {
            "runId": run_id, "eventsSha256": hashlib.sha256(canonical(transcript("a", 1))).hexdigest(),
            "createdAt": created_at}},
    }


def test_anyone_can_recompute_events_sha256_from_the_events_endpoint(client):
    run_id = new_run(client, "scenarioId=pricing-v1&seed=42")
    events = client.get(f"/runs/{run_id}/events").get_json()["events"]
    digest = client.get(f"/runs/{run_id}").get_json()["eventsSha256"]
    assert hashlib.sha256(canonical(events)).hexdigest() == digest


def test_non_ascii_text_is_served_as_utf8_not_escaped(fake_client):
    run_id = new_run(fake_client)
    body = fake_client.get(f"/runs/{run_id}/events").get_data()
    assert "Évaluation".encode() in body


def test_two_fresh_apps_record_byte_identical_events():
    bodies = []
    for _ in range(2):
        client = create_app(test_settings()).test_client()
        run_id = new_run(client, "scenarioId=pricing-v1&seed=42")
        events = client.get(f"/runs/{run_id}/events").get_json()["events"]
        bodies.append(canonical(events))
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(
    "path",
    ["/runs/{}", "/runs/{}/events"],
    ids=["metadata", "events"],
)
@pytest.mark.parametrize(
    ("run_id", "shown"),
    [("non-existent-run", "non-existent-run"), ("run_a_1_1", "run_a_1_1"), ("%0Arun%00x", "?run?x")],
    ids=["unknown", "well-formed-but-unknown", "control-characters-not-echoed"],
)
def test_unknown_run_is_the_documented_404(client, path, run_id, shown):
    response = client.get(path.format(run_id))
    assert response.status_code == 404
    assert response.get_json() == {"type": "BAD_INPUT", "message": f"Run {shown} not found"}


def test_reading_a_run_neither_renews_nor_counts_as_a_hit(fake_client, frozen):
    run_id = new_run(fake_client)
    before = fake_client.get(f"/runs/{run_id}").get_json()
    frozen.tick(60)
    fake_client.get(f"/runs/{run_id}/events")
    after = fake_client.get(f"/runs/{run_id}").get_json()
    assert (after["expiresAt"], after["hits"]) == (before["expiresAt"], before["hits"]) == (before["expiresAt"], 0)


def test_events_go_gzip_compressed_as_stored_to_clients_that_accept_it(fake_client):
    run_id = new_run(fake_client)
    plain = fake_client.get(f"/runs/{run_id}/events")
    packed = fake_client.get(f"/runs/{run_id}/events", headers={"Accept-Encoding": "gzip, deflate"})
    assert plain.headers.get("Content-Encoding") is None
    assert packed.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in plain.headers["Vary"] and plain.headers["Vary"] == packed.headers["Vary"]
    assert gzip.decompress(packed.get_data()) == plain.get_data()
    assert len(packed.get_data()) < len(plain.get_data())
    refused = fake_client.get(f"/runs/{run_id}/events", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert refused.headers.get("Content-Encoding") is None


def test_a_304_repeats_the_vary_and_cache_control_of_its_200_and_with_keys_caches_are_private(fake_client):
    from app.access import new_key

    run_id = new_run(fake_client)
    first = fake_client.get(f"/runs/{run_id}/events")
    assert first.headers["Cache-Control"] == "public, max-age=3600"
    again = fake_client.get(f"/runs/{run_id}/events", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.headers.getlist("Vary") == first.headers.getlist("Vary") == ["Accept-Encoding", "Prefer"]
    assert again.headers["Cache-Control"] == first.headers["Cache-Control"]
    for path in ("/export.csv", "/snapshot", "/attestation"):
        assert fake_client.get(f"/runs/{run_id}{path}").headers["Cache-Control"] == "public, max-age=3600", path
    secret, entry = new_key("reader", "read+run")
    from app.access import parse_keys

    keyed = create_app(test_settings(api_keys=parse_keys(entry)), engine=FakeEngine()).test_client()
    auth = {"Authorization": f"Bearer {secret}"}
    keyed_run = keyed.get("/runs/lookup?scenarioId=a&seed=1", headers=auth).get_json()["runId"]
    assert keyed.get(f"/runs/{keyed_run}/events", headers=auth).headers["Cache-Control"] == "private, max-age=3600"
