"""GET /runs/lookup over HTTP: the contract's answers and every row of its validation table."""

from __future__ import annotations

import hashlib
import re

import pytest

from app import create_app
from app.schemas import SCENARIO_ID_MESSAGE
from app.schemas import SEED_RANGE_MESSAGE
from harness.fakes import SteppedEngine
from tests.conftest import test_settings

REQUIRED = "scenarioId and seed parameters required"
NOT_INTEGER = "seed must be a valid integer"


def lookup(client, query):
    return client.get(f"/runs/lookup?{query}")


def test_first_lookup_is_new_and_repeats_are_cache(client):
    first = lookup(client, "scenarioId=pricing-v1&seed=42")
    assert first.status_code == 200
    body = first.get_json()
    assert set(body) == {"runId", "source"}
    assert body["source"] == "new"
    assert re.fullmatch(r"run_pricing-v1_42_\d{13}", body["runId"])
    for _ in range(3):
        again = lookup(client, "scenarioId=pricing-v1&seed=42")
        assert again.status_code == 200
        assert again.get_json() == {"runId": body["runId"], "source": "cache"}


@pytest.mark.parametrize(
    "query",
    ["scenarioId=pricing-v1&seed=042", "scenarioId=pricing-v1&seed=%2B42",
     "seed=42&scenarioId=pricing-v1&extra=ignored&other=1&other=2"],
    ids=["leading-zero", "percent-encoded-plus", "reordered-with-unknown-parameters"],
)
def test_the_same_seed_written_differently_is_the_same_run(client, query):
    first = lookup(client, "scenarioId=pricing-v1&seed=42").get_json()
    assert lookup(client, query).get_json() == {"runId": first["runId"], "source": "cache"}


def test_minus_zero_is_seed_zero(client):
    first = lookup(client, "scenarioId=s&seed=0").get_json()
    assert lookup(client, "scenarioId=s&seed=-0").get_json() == {"runId": first["runId"], "source": "cache"}
    assert first["runId"].startswith("run_s_0_")


@pytest.mark.parametrize(
    ("first", "second"),
    [("scenarioId=a&seed=42", "scenarioId=b&seed=42"), ("scenarioId=a&seed=42", "scenarioId=a&seed=17"),
     ("scenarioId=a&seed=1", "scenarioId=A&seed=1"), ("scenarioId=a&seed=1", "scenarioId=a&seed=-1")],
    ids=["other-scenario", "other-seed", "scenario-case-matters", "negative-seed"],
)
def test_different_keys_are_different_runs(client, first, second):
    one = lookup(client, first).get_json()
    two = lookup(client, second).get_json()
    assert one["source"] == two["source"] == "new"
    assert one["runId"] != two["runId"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", REQUIRED),
        ("scenarioId=pricing-v1", REQUIRED),
        ("seed=42", REQUIRED),
        ("scenarioId=&seed=42", REQUIRED),
        ("scenarioId=pricing-v1&seed=", REQUIRED),
        ("scenarioId=pricing-v1&seed=1.5", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=1e3", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=4_2", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=%2042", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=+42", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=42%20", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=abc", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=0x2A", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=%D9%A4%D9%A2", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=42%0A", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=--1", NOT_INTEGER),
        ("scenarioId=pricing-v1&seed=9007199254740992", SEED_RANGE_MESSAGE),
        ("scenarioId=pricing-v1&seed=-9007199254740992", SEED_RANGE_MESSAGE),
        ("scenarioId=pricing-v1&seed=" + "9" * 5000, SEED_RANGE_MESSAGE),
        ("scenarioId=_pricing&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=.hidden&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=a%2Fb&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=a%20b&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=caf%C3%A9&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=a%00&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=a%0A&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=" + "a" * 129 + "&seed=1", SCENARIO_ID_MESSAGE),
        ("scenarioId=a&scenarioId=b&seed=1", "scenarioId parameter given more than once"),
        ("scenarioId=a&seed=1&seed=1", "seed parameter given more than once"),
    ],
    ids=[
        "nothing", "missing-seed", "missing-scenario", "empty-scenario", "empty-seed",
        "fraction", "exponent", "underscore", "leading-space", "raw-plus-is-space", "trailing-space", "letters",
        "hex", "arabic-indic-digits", "trailing-newline", "double-sign",
        "above-safe-integer", "below-safe-integer", "five-thousand-digits",
        "leading-underscore", "leading-dot", "slash", "space", "non-ascii", "nul", "scenario-trailing-newline",
        "129-characters",
        "scenario-twice", "seed-twice",
    ],
)
def test_lookup_rejects_bad_input(fake_client, fake_engine, query, message):
    response = lookup(fake_client, query)
    assert response.status_code == 400
    assert response.get_json() == {"type": "BAD_INPUT", "message": message}
    assert fake_engine.calls == 0


def test_seed_range_message_starts_as_the_contract_says():
    assert SEED_RANGE_MESSAGE.startswith(NOT_INTEGER)


@pytest.mark.parametrize(
    "query",
    ["scenarioId=a&seed=9007199254740991", "scenarioId=a&seed=-9007199254740991",
     "scenarioId=" + "a" * 128 + "&seed=1", "scenarioId=9.a_b-C&seed=1"],
    ids=["max-safe-seed", "min-safe-seed", "128-characters", "every-allowed-character"],
)
def test_lookup_accepts_the_edges_of_valid_input(fake_client, query):
    response = lookup(fake_client, query)
    assert response.status_code == 200
    assert response.get_json()["source"] == "new"


def test_cache_key_is_the_documented_digest(client):
    run_id = lookup(client, "scenarioId=pricing-v1&seed=042").get_json()["runId"]
    metadata = client.get(f"/runs/{run_id}").get_json()
    expected = hashlib.sha256(b"pricing-v1:42:test-code-hash").hexdigest()
    assert metadata["cacheKey"] == expected
    assert metadata["engineCodeHash"] == "test-code-hash"


def test_failed_engine_run_caches_nothing_and_the_next_lookup_retries(fake_client, fake_engine):
    fake_engine.failures = 1
    failed = lookup(fake_client, "scenarioId=a&seed=1")
    assert failed.status_code == 500
    # The engine's reason, as the exception said it: a client knows why without the server's log.
    assert failed.get_json() == {"type": "ENGINE_ERROR",
                                 "message": "The engine failed to run scenario a seed 1: RuntimeError: engine exploded"}
    retried = lookup(fake_client, "scenarioId=a&seed=1")
    assert retried.status_code == 200
    assert retried.get_json()["source"] == "new"
    assert fake_engine.calls == 2


def test_a_registry_full_of_running_runs_answers_503_to_a_new_one_and_hits_still_answer():
    engine = SteppedEngine()
    client = create_app(test_settings(max_entries=2), engine=engine).test_client()
    running = [client.get(f"/runs/lookup?scenarioId=r&seed={seed}", headers={"Prefer": "respond-async"})
               for seed in (1, 2)]
    assert [reply.status_code for reply in running] == [202, 202]
    full = client.get("/runs/lookup?scenarioId=r&seed=3")
    assert full.status_code == 503 and full.headers["Retry-After"] == "1"
    assert full.get_json()["type"] == "UNAVAILABLE"
    again = client.get("/runs/lookup?scenarioId=r&seed=1", headers={"Prefer": "wait=0"})
    assert (again.status_code, again.get_json()["source"]) == (202, "cache")
    engine.step(10)
    assert client.get("/runs/lookup?scenarioId=r&seed=1").status_code == 200
