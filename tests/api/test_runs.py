"""GET /runs: the runs that can be read, newest first, a page at a time; its query named when bad."""

from __future__ import annotations

from datetime import timedelta

import pytest

from harness.fakes import FailingMidRunEngine

LIMIT = "limit must be a whole number from 1 to 100"
CURSOR = "cursor must be a page's next, as GET /runs gave it"


def test_the_runs_are_listed_newest_first_and_paged_by_the_next_cursor(fake_client, frozen):
    run_ids = []
    for seed in range(5):
        run_ids.append(fake_client.get(f"/runs/lookup?scenarioId=listed&seed={seed}").get_json()["runId"])
        frozen.tick(timedelta(milliseconds=5))
    first = fake_client.get("/runs?limit=2")
    assert first.status_code == 200 and first.headers["Cache-Control"] == "no-cache"
    body = first.get_json()
    assert [run["runId"] for run in body["runs"]] == run_ids[:2:-1] and body["next"] == run_ids[3]
    newest = body["runs"][0]
    assert newest == {"runId": run_ids[4], "scenarioId": "listed", "seed": 4, "status": "done",
                      "createdAt": int(run_ids[4].rsplit("_", 1)[1]), "determinism": {
                          "status": "unchecked", "checks": 0, "divergences": 0,
                          "reference": newest["determinism"]["reference"]}}
    rest = fake_client.get(f"/runs?limit=2&cursor={body['next']}").get_json()
    last = fake_client.get(f"/runs?limit=2&cursor={rest['next']}").get_json()
    assert [run["runId"] for run in rest["runs"] + last["runs"]] == run_ids[2::-1] and last["next"] is None
    assert len(fake_client.get("/runs").get_json()["runs"]) == 5  # 20 by default


def test_a_failed_run_is_listed_while_it_is_kept_and_not_after(settings, frozen):
    from app.factory import create_app

    client = create_app(settings, engine=FailingMidRunEngine()).test_client()
    failed = client.get("/runs/lookup?scenarioId=breaks&seed=1")
    assert failed.status_code == 500
    listed = client.get("/runs").get_json()["runs"]
    assert [(run["status"], run["determinism"]) for run in listed] == [("failed", None)]
    frozen.tick(timedelta(minutes=5))  # a failed run is kept five minutes
    assert client.get("/runs").get_json() == {"runs": [], "next": None}


@pytest.mark.parametrize(("query", "message"), [
    ("limit=0", LIMIT), ("limit=101", LIMIT), ("limit=1e2", LIMIT), ("limit=+5", LIMIT), ("limit=%205", LIMIT),
    ("limit=", LIMIT), ("limit=1&limit=2", "limit parameter given more than once"), ("cursor=nope", CURSOR),
    ("cursor=run_a_1_2%0A", CURSOR), ("cursor=", CURSOR),
])
def test_a_bad_query_is_named(client, query, message):
    reply = client.get(f"/runs?{query}")
    assert (reply.status_code, reply.get_json()) == (400, {"type": "BAD_INPUT", "message": message})
