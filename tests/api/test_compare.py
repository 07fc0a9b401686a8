"""POST /compare: both runs looked up, transcripts and reports diffed, every bad part named."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest

REQUIRED = "scenarioId and seed are required"
BODY = 'the body must be a JSON object: {"left": {"scenarioId", "seed"}, "right": {...}}'


def compare(client, body):
    if body == "null-json":
        return client.post("/compare", data=b"null", content_type="application/json")
    return client.post("/compare", json=body)


def test_seed_documents_ab_example(client):
    """compareWithRegistry() of the original document: both sides with the same seed."""
    body = compare(client, {"left": {"scenarioId": "pricing-v1", "seed": 42},
                            "right": {"scenarioId": "pricing-v2", "seed": 42}}).get_json()
    assert body["left"]["source"] == body["right"]["source"] == "new"
    assert body["left"]["runId"].startswith("run_pricing-v1_42_")
    assert body["right"]["runId"].startswith("run_pricing-v2_42_")
    diff = body["diff"]
    assert diff["identical"] is False and diff["firstDifference"] == 1
    assert diff["tokens"] == {"left": 144, "right": 144, "delta": 0}
    best = diff["report"]["bestPrice"]
    assert (best["left"], best["right"], best["delta"]) == (63.99, 69.99, 6.0)  # 6.0, not 6.000000000000007
    assert all(set(metric) == {"left", "right", "delta"} for metric in diff["report"].values())


def test_compare_uses_and_renews_cached_runs(fake_client, fake_engine, frozen):
    left = fake_client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    frozen.tick(timedelta(minutes=59))
    body = compare(fake_client, {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": "2"}})
    assert body.get_json()["left"] == {**body.get_json()["left"], "runId": left, "source": "cache"}
    frozen.tick(timedelta(minutes=59))
    assert fake_client.get("/runs/lookup?scenarioId=a&seed=1").get_json() == {"runId": left, "source": "cache"}
    assert fake_engine.calls == 2


def test_a_run_compared_with_itself_is_identical(fake_client):
    side = {"scenarioId": "a", "seed": 1}
    body = compare(fake_client, {"left": side, "right": side}).get_json()
    assert (body["left"]["source"], body["right"]["source"]) == ("new", "cache")
    assert body["left"]["runId"] == body["right"]["runId"]
    assert body["diff"]["identical"] is True and body["diff"]["firstDifference"] is None
    assert body["diff"]["report"] == {"score": {"left": 1, "right": 1, "delta": 0}}


def test_metrics_present_on_one_side_only_have_no_delta(fake_client):
    body = compare(fake_client, {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 3}})
    assert body.get_json()["diff"]["report"] == {"score": {"left": 1, "right": 3, "delta": 2}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"right": {"scenarioId": "a", "seed": 1}}, "left is required"),
        ({"left": {"scenarioId": "a", "seed": 1}}, "right is required"),
        ({"left": None, "right": {"scenarioId": "a", "seed": 1}}, "left must be an object with scenarioId and seed"),
        ({"left": [1], "right": {"scenarioId": "a", "seed": 1}}, "left must be an object with scenarioId and seed"),
        ({"left": {"seed": 1}, "right": {"scenarioId": "a", "seed": 1}}, f"left: {REQUIRED}"),
        ({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "a"}}, f"right: {REQUIRED}"),
        ({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "", "seed": 1}}, f"right: {REQUIRED}"),
        ({"left": {"scenarioId": "a", "seed": 1.5}, "right": {"scenarioId": "a", "seed": 1}},
         "left: seed must be a valid integer"),
        ({"left": {"scenarioId": "a", "seed": True}, "right": {"scenarioId": "a", "seed": 1}},
         "left: seed must be a valid integer"),
        ({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "a", "seed": 2**53}},
         "right: seed must be a valid integer between -9007199254740991 and 9007199254740991"),
        ({"left": {"scenarioId": "a/b", "seed": 1}, "right": {"scenarioId": "a", "seed": 1}},
         "left: scenarioId must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-', starting with a letter or"
         " digit"),
        ({"left": {"scenarioId": 5, "seed": 1}, "right": {"scenarioId": "a", "seed": 1}},
         "left: scenarioId must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-', starting with a letter or"
         " digit"),
        ([], BODY),
        ("text", BODY),
        ("null-json", BODY),
    ],
    ids=["no-left", "no-right", "null-left", "list-left", "left-no-scenario", "right-no-seed", "right-empty-scenario",
         "fractional-seed", "boolean-seed", "unsafe-seed", "bad-scenario", "numeric-scenario", "list-body",
         "string-body", "null-body"],
)
def test_each_malformed_part_is_named(fake_client, fake_engine, body, message):
    response = compare(fake_client, body)
    assert response.status_code == 400
    assert response.get_json() == {"type": "BAD_INPUT", "message": message}
    assert fake_engine.calls == 0


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b'{"left": ', "application/json", "the body is not valid JSON"),
        (b"\xff\xfe", "application/json", "the body is not valid JSON"),
        (b"[" * 20000 + b"]" * 20000, "application/json", "the body is not valid JSON"),
        (b"", "application/json", "the body is not valid JSON"),
        (b'{"left": {}}', None, "the body must be JSON, sent with Content-Type: application/json"),
    ],
    ids=["truncated", "not-utf8", "deeply-nested", "empty", "no-content-type"],
)
def test_bodies_that_are_not_json_are_bad_input(fake_client, data, content_type, message):
    response = fake_client.post("/compare", data=data, content_type=content_type)
    assert response.status_code == 400
    assert response.get_json() == {"type": "BAD_INPUT", "message": message}


@pytest.mark.parametrize("path", ["/compare", "/runs/RUN/verify"])
@pytest.mark.parametrize(
    ("data", "content_type"),
    [(b"left=a", "application/x-www-form-urlencoded"), (b"", "application/x-www-form-urlencoded"),
     (b"--b--", "multipart/form-data; boundary=b"), (b'{"left": {}}', "text/plain")],
    ids=["form", "empty-form", "multipart", "text-plain"],
)
def test_form_posts_start_nothing(fake_client, fake_engine, path, data, content_type):
    """What a page of another site can make a browser send without asking: a form, or text."""
    run_id = fake_client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    response = fake_client.post(path.replace("RUN", run_id), data=data, content_type=content_type)
    assert response.status_code == 415
    assert response.get_json() == {
        "type": "UNSUPPORTED_MEDIA_TYPE",
        "message": "The body must be JSON, sent with Content-Type: application/json, or absent",
    }
    assert fake_engine.calls == 1  # the lookup's run only


@pytest.mark.parametrize("path", ["/compare", "/runs/RUN/verify"])
def test_posts_a_browser_marks_cross_site_start_nothing(fake_client, fake_engine, path):
    run_id = fake_client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    response = fake_client.post(path.replace("RUN", run_id), headers={"Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    assert response.get_json()["type"] == "FORBIDDEN"
    assert fake_engine.calls == 1


def test_a_body_over_64_kib_is_refused(fake_client):
    response = fake_client.post("/compare", data=b" " * (64 * 1024 + 1), content_type="application/json")
    assert response.status_code == 413
    assert response.get_json() == {"type": "PAYLOAD_TOO_LARGE", "message": "The request body is larger than 64 KiB"}


@pytest.mark.parametrize("path", ["/compare", "/runs/RUN/verify"])
def test_a_chunked_body_over_64_kib_is_refused_not_cut_short(fake_client, fake_engine, path):
    """Valid JSON in its first 64 KiB, then more: werkzeug would read the first 64 KiB as the body."""
    run_id = fake_client.get("/runs/lookup?scenarioId=a&seed=1").get_json()["runId"]
    valid = json.dumps({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 2}}).encode()
    body = valid + b" " * (64 * 1024 - len(valid)) + b"x" * 16_000
    response = fake_client.post(path.replace("RUN", run_id), input_stream=io.BytesIO(body),
                                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status_code == 413
    assert response.get_json()["type"] == "PAYLOAD_TOO_LARGE"
    assert fake_engine.calls == 1


def test_a_chunked_body_within_64_kib_is_read_whole(fake_client):
    valid = json.dumps({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 2}}).encode()
    body = valid + b" " * (64 * 1024 - len(valid))
    response = fake_client.post("/compare", input_stream=io.BytesIO(body),
                                headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    assert response.status_code == 200 and response.get_json()["right"]["seed"] == 2


def test_unknown_fields_are_ignored(fake_client):
    body = {"left": {"scenarioId": "a", "seed": 1, "x": 1}, "right": {"scenarioId": "a", "seed": 1}, "note": "hi"}
    assert compare(fake_client, body).status_code == 200


def test_engine_failure_on_one_side_is_engine_error(fake_client, fake_engine):
    fake_engine.failures = 1
    response = compare(fake_client, {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 1}})
    assert response.status_code == 500 and response.get_json()["type"] == "ENGINE_ERROR"


class _ReportEngine:
    """Its scenarioId says what its report holds: ``huge``, ``tiny`` (a difference past any float)."""

    name, version = "reports", "1"

    def run(self, scenario_id, seed):
        value = {"huge": 1e308, "tiny": -1e308}.get(scenario_id, seed)
        return [{"type": "start", "data": {"seed": seed}}, {"type": "report", "data": {"level": value}},
                {"type": "done", "data": {}}]


def test_a_difference_past_any_float_is_null_and_every_answer_is_json(settings):
    from app import create_app

    client = create_app(settings, engine=_ReportEngine()).test_client()
    answer = compare(client, {"left": {"scenarioId": "tiny", "seed": 1}, "right": {"scenarioId": "huge", "seed": 1}})
    assert b"Infinity" not in answer.get_data() and b"NaN" not in answer.get_data()
    assert json.loads(answer.get_data(), parse_constant=pytest.fail)["diff"]["report"]["level"] == {
        "left": -1e308, "right": 1e308, "delta": None}


def test_at_the_new_run_limits_edge_a_compare_starts_neither_side(settings):
    import dataclasses

    from app import create_app
    from harness.fakes import FakeEngine

    engine = FakeEngine()
    client = create_app(dataclasses.replace(settings, new_runs_per_minute=2), engine=engine).test_client()
    assert client.get("/runs/lookup?scenarioId=first&seed=1").status_code == 200  # one of two spent
    refused = compare(client, {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 1}})
    assert refused.status_code == 429 and engine.calls == 1  # two needed, one left: neither started
    assert client.get("/registry/stats").get_json()["total_entries"] == 1
    one_new = compare(client, {"left": {"scenarioId": "first", "seed": 1}, "right": {"scenarioId": "b", "seed": 1}})
    assert one_new.status_code == 200 and engine.calls == 2  # the one left is enough for one side


def test_a_compare_that_may_not_start_runs_only_reads(fake_client, fake_engine):
    fake_client.get("/runs/lookup?scenarioId=a&seed=1")
    missing = compare(fake_client, {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 2},
                                    "start": False})
    assert missing.status_code == 404
    assert missing.get_json() == {"type": "BAD_INPUT", "message": 'right: scenario b seed 2 has no run; compare with'
                                  ' "start": true to start it'}
    assert fake_engine.calls == 1
    both = compare(fake_client, {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "a", "seed": 1},
                                 "start": False})
    assert both.status_code == 200 and both.get_json()["diff"]["identical"] is True
    for not_a_boolean in ("no", 0, 1, None, "false"):  # 0 and 1 pass for booleans in Python's sets
        refused = compare(fake_client, {"left": {"scenarioId": "a", "seed": 1},
                                        "right": {"scenarioId": "a", "seed": 1}, "start": not_a_boolean})
        assert refused.get_json() == {"type": "BAD_INPUT", "message": "start must be true or false"}, not_a_boolean


def test_a_pairs_comparison_reads_each_transcript_once_however_often_it_is_asked(fake_client, monkeypatch):
    """Two 20 MB transcripts took 1.8 s of the process's CPU for every compare; now each run's facts
    are made once, and the pair's first difference is found from them."""
    from app.evidence import diff

    made = []
    real = diff.RunFacts.of
    monkeypatch.setattr(diff.RunFacts, "of", classmethod(lambda cls, events: made.append(len(events)) or real(events)))
    body = {"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 2}}
    answers = [compare(fake_client, body).get_json()["diff"] for _ in range(10)]
    assert len(made) == 2 and all(answer == answers[0] for answer in answers)
    assert answers[0]["firstDifference"] == 1 and answers[0]["identical"] is False
