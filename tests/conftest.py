"""Shared fixtures: a fresh app per test, its client, a frozen clock, a fake engine."""

from __future__ import annotations

import dataclasses
import signal

import freezegun
import freezegun.api
import pytest
from freezegun import freeze_time

from app import create_app
from app.config import Settings
from harness.fakes import FakeEngine

FROZEN_START = "2026-11-26 12:00:00"
# freezegun gives the real time to a call with the threading module within five frames of it,
# that is to every thread's own code: the service's threads (a run's recorder finishing it, the
# limits library's timer expiring windows) would then live days away from the test's frozen
# clock. Without that inspection every call of the patched clock gets the frozen time; the
# threading module keeps its own, real, clock for timeouts (it is still on the ignore list, so
# freezegun leaves its module attributes alone).
freezegun.api.call_stack_inspection_limit = 0
# pytest's own clock stays real, or --durations reports the frozen years since the epoch.
freezegun.configure(extend_ignore_list=["_pytest"])
# A shell without job control starts `make test &` with SIGINT ignored, and an ignored signal stays
# ignored across exec: the commands the tests start would then outlive the Ctrl-C the tests send
# them (and a Python one would never install its KeyboardInterrupt handler). A handled signal is
# reset to its default at exec, so handling it here gives every command the disposition a
# terminal would.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
    from harness.servers import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied for this test."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="module")
def browser():
    """A real Chromium (Playwright), one for the tests of a file that asks for it."""
    from harness.browser import chromium

    with chromium() as running:
        yield running
