"""Shared fixtures: a fresh app per test, its client, a frozen clock, a fake engine."""

from __future__ import annotations

import dataclasses

import freezegun
import pytest
from freezegun import freeze_time
from freezegun.config import DEFAULT_IGNORE_LIST

from app import create_app
from app.config import Settings
from tests.fakes import FakeEngine

FROZEN_START = "2026-11-26 12:00:00"
# freezegun gives real time to code called from the threading module, which is every thread's
# bottom frame: the frozen clock must hold in the service's threads too (the limits library
# expires its windows in a timer thread), or a test's frozen minute would pass in an instant.
freezegun.configure(default_ignore_list=[name for name in DEFAULT_IGNORE_LIST if name != "threading"])


def test_settings(**overrides: object) -> Settings:
    """Defaults with a fixed engineCodeHash, so no test depends on the checkout's git state, and
    no new-run limit, which the tests of limits set themselves."""
    return dataclasses.replace(Settings(engine_code_hash="test-code-hash", new_runs_per_minute=0), **overrides)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def settings() -> Settings:
    return test_settings()


@pytest.fixture
def app(settings):
    """The real default engine behind a fresh app: every test is a new world."""
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def fake_client(settings, fake_engine):
    """A client whose app runs the counting fake engine."""
    return create_app(settings, engine=fake_engine).test_client()


@pytest.fixture
def frozen():
    """Freeze the clock; move it with ``frozen.tick(...)`` or ``frozen.move_to(...)``."""
    with freeze_time(FROZEN_START) as frozen_time:
        yield frozen_time


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One redis-server for the session, started by the tests and stopped by PID."""
    from tests.servers import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url
