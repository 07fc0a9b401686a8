"""TTL over HTTP with a frozen clock: renewal on hit, expiry, the boundary instant."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from app import create_app
from tests.conftest import test_settings

LOOKUP = "/runs/lookup?scenarioId=a&seed=1"


def test_hit_renews_ttl(fake_client, frozen):
    first = fake_client.get(LOOKUP).get_json()
    frozen.tick(timedelta(minutes=59))
    assert fake_client.get(LOOKUP).get_json() == {**first, "source": "cache"}
    frozen.tick(timedelta(minutes=59))
    assert fake_client.get(LOOKUP).get_json() == {**first, "source": "cache"}


def test_expired_entry_is_a_new_run_and_its_old_run_id_is_gone(fake_client, fake_engine, frozen):
    first = fake_client.get(LOOKUP).get_json()
    frozen.tick(timedelta(minutes=60))
    second = fake_client.get(LOOKUP).get_json()
    assert second["source"] == "new"
    assert second["runId"] != first["runId"]
    assert fake_engine.calls == 2
    assert fake_client.get(f"/runs/{first['runId']}/events").status_code == 404
    assert fake_client.get(f"/runs/{second['runId']}/events").status_code == 200


@pytest.mark.parametrize(("elapsed_ms", "source"), [(59_999, "cache"), (60_000, "new")], ids=["last-ms", "boundary"])
def test_entry_is_live_until_exactly_its_expiry(settings, fake_engine, frozen, elapsed_ms, source):
    client = create_app(dataclasses.replace(settings, ttl_minutes=1), engine=fake_engine).test_client()
    client.get(LOOKUP)
    frozen.tick(timedelta(milliseconds=elapsed_ms))
    assert client.get(LOOKUP).get_json()["source"] == source


def test_fractional_ttl_minutes(fake_engine, frozen):
    client = create_app(test_settings(ttl_minutes=0.05), engine=fake_engine).test_client()
    run_id = client.get(LOOKUP).get_json()["runId"]
    assert client.get(f"/runs/{run_id}").get_json()["expiresAt"] == int(run_id.rsplit("_", 1)[1]) + 3000
    frozen.tick(timedelta(seconds=2.999))
    assert client.get(LOOKUP).get_json()["source"] == "cache"
    frozen.tick(timedelta(seconds=3))
    assert client.get(LOOKUP).get_json()["source"] == "new"


def test_reading_events_does_not_keep_a_run_alive(fake_client, frozen):
    run_id = fake_client.get(LOOKUP).get_json()["runId"]
    for _ in range(6):
        frozen.tick(timedelta(minutes=10))
        fake_client.get(f"/runs/{run_id}/events")
    assert fake_client.get(f"/runs/{run_id}/events").status_code == 404


def test_new_run_in_the_same_millisecond_gets_a_new_run_id(fake_engine, frozen):
    """With the clock standing still, expiry and re-creation still give distinct runIds."""
    client = create_app(test_settings(ttl_minutes=0.05), engine=fake_engine).test_client()
    first = client.get(LOOKUP).get_json()["runId"]
    frozen.tick(timedelta(seconds=3))
    second = client.get(LOOKUP).get_json()["runId"]
    third = client.get("/runs/lookup?scenarioId=a&seed=2").get_json()["runId"]
    assert len({first, second}) == 2
    assert int(third.rsplit("_", 1)[1]) > int(second.rsplit("_", 1)[1])
