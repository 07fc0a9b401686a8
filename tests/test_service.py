"""RunService over the in-memory registry and fake engines, without Flask."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.access import open_caller
from app.engine import as_engine
from app.errors import BadInput
from app.errors import EngineFailed
from app.errors import RunNotFound
from app.errors import RunPending
from app.errors import RunRunning
from app.factory import create_app
from app.models import RunKey
from app.registry.memory import MemoryRegistry
from app.runs.runner import Runner
from app.runs.service import RunService
from harness.fakes import FakeEngine
from harness.fakes import MalformedEngine
from harness.fakes import SteppedEngine
from harness.servers import wait_until
from tests.conftest import test_settings

CLIENT = open_caller("test-client")  # every scope: the service without keys
WAIT = 10.0


def make_service(engine, **settings):
    settings = test_settings(**settings)
    return RunService(MemoryRegistry(settings.ttl_ms, settings.max_entries), engine, settings)


def test_64_threads_on_one_new_key_run_the_engine_once():
    gate = threading.Event()
    engine = FakeEngine(gates={"hot": gate})
    service = make_service(engine)
    start = threading.Barrier(64)

    def lookup():
        start.wait()
        return service.lookup("hot", 7, CLIENT, WAIT)

    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = [pool.submit(lookup) for _ in range(64)]
        assert engine.started.wait(timeout=30)
        gate.set()
        results = [future.result(timeout=30) for future in futures]
    assert engine.calls == 1
    assert [answer.source for answer in results].count("new") == 1
    assert len({answer.run_id for answer in results}) == 1 and all(answer.done for answer in results)


def test_a_slow_engine_run_of_one_key_does_not_delay_another_key():
    gate = threading.Event()
    engine = FakeEngine(gates={"slow": gate})
    service = make_service(engine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(service.lookup, "slow", 1, CLIENT, WAIT)
        assert engine.started.wait(timeout=30)
        answer = service.lookup("fast", 1, CLIENT, WAIT)  # answered while "slow" is still running
        assert answer.source == "new" and answer.done and not slow.done()
        assert service.run(answer.run_id).identity.scenario_id == "fast"
        gate.set()
        assert slow.result(timeout=30).source == "new"


def test_a_lookup_answers_pending_past_its_wait_and_done_once_the_run_is():
    engine = SteppedEngine()
    service = make_service(engine)
    first = service.lookup("a", 1, CLIENT, wait_s=0.05)
    assert (first.source, first.done) == ("new", False)
    assert service.run(first.run_id).status == "running"
    again = service.lookup("a", 1, CLIENT, wait_s=0)
    assert (again.run_id, again.source, again.done) == (first.run_id, "cache", False)
    engine.step(5)
    done = service.lookup("a", 1, CLIENT, WAIT)
    assert (done.run_id, done.source, done.done) == (first.run_id, "cache", True)
    assert engine.calls == 1


def test_a_running_run_shows_its_events_so_far_and_nothing_else_of_its_transcript():
    engine = SteppedEngine()
    app = create_app(test_settings(), engine=engine)  # the services as the app wires them
    service, verification = app.extensions["run_service"], app.extensions["verification_service"]
    run_id = service.lookup("a", 1, CLIENT, wait_s=0).run_id
    engine.step(2)
    wait_until(lambda: service.run(run_id).count == 2)
    state = service.run(run_id)
    assert (state.status, state.record, state.expires_at) == ("running", None, None)
    with pytest.raises(RunPending) as pending:
        service.done_run(run_id, wait_s=0.05)
    assert (pending.value.run_id, pending.value.count) == (run_id, 2)
    with pytest.raises(RunRunning):
        verification.verify(run_id, CLIENT)
    engine.step(3)
    assert service.done_run(run_id, WAIT).event_count == 5


def test_the_live_stream_is_the_replay_once_the_run_is_done():
    engine = SteppedEngine()
    service = make_service(engine, keepalive_s=0.05)
    run_id = service.lookup("a", 1, CLIENT, wait_s=0).run_id
    live = iter(service.stream(run_id, None, 0))
    received = [next(live)]  # retry
    for _ in range(5):
        engine.step()
        message = next(live)
        while message == b": keepalive\n\n":
            message = next(live)
        received.append(message)
    received += list(live)  # ends after the last event
    replay = b"".join(service.stream(run_id, None, 0))
    assert b"".join(received) == replay and replay.count(b"id: ") == 5


def test_a_live_stream_resumes_mid_run_and_keeps_alive_while_quiet():
    engine = SteppedEngine()
    service = make_service(engine, keepalive_s=0.05)
    run_id = service.lookup("a", 1, CLIENT, wait_s=0).run_id
    engine.step(3)
    wait_until(lambda: service.run(run_id).count == 3)
    live = iter(service.stream(run_id, 2, 0))
    assert next(live) == b"retry: 3000\n\n"
    assert next(live).startswith(b"id: 3\n")
    assert next(live) == b": keepalive\n\n"
    engine.step(2)
    rest = b"".join(live)
    replayed = b"".join(service.stream(run_id, 3, 0)).removeprefix(b"retry: 3000\n\n")
    assert rest.replace(b": keepalive\n\n", b"") == replayed
    with pytest.raises(BadInput, match="Last-Event-ID 9 is not a position in this run"):
        service.stream(run_id, 9, 0)


def test_a_run_that_fails_mid_run_ends_its_live_streams_with_an_error_and_frees_its_key():
    engine = SteppedEngine(fail_at=3)
    service = make_service(engine, keepalive_s=0.05)
    run_id = service.lookup("a", 1, CLIENT, wait_s=0).run_id
    live = iter(service.stream(run_id, None, 0))
    engine.step(3)
    messages = b"".join(live).replace(b": keepalive\n\n", b"")
    assert messages.endswith(
        b'id: end\nevent: error\ndata: {"type":"ENGINE_ERROR","message":"The engine failed to run scenario a'
        b' seed 1: RuntimeError: engine exploded mid-run"}\n\n'
    )
    assert messages.count(b"id: ") == 3 and messages.count(b"id: end\n") == 1  # two events, then the end
    state = service.run(run_id)
    assert (state.status, state.count, state.error.type) == ("failed", 2, "ENGINE_ERROR")
    with pytest.raises(EngineFailed):
        service.done_run(run_id, 0)
    engine.fail_at = None
    engine.step(5)
    again = service.lookup("a", 1, CLIENT, WAIT)
    assert again.source == "new" and again.run_id != run_id and again.done


def test_failing_engine_fails_the_waiting_lookup_and_caches_nothing():
    engine = FakeEngine(failures=1)
    service = make_service(engine)
    with pytest.raises(EngineFailed, match="scenario a seed 1"):
        service.lookup("a", 1, CLIENT, WAIT)
    assert service.lookup("a", 1, CLIENT, WAIT).source == "new"
    assert engine.calls == 2


@pytest.mark.parametrize(
    "events",
    [
        None,
        [{"type": "start"}],
        [{"type": "start", "data": {}, "extra": 1}],
        [{"type": "", "data": {}}],
        [{"type": "bad type\n", "data": {}}],
        [{"type": 3, "data": {}}],
        [{"type": "token", "data": "text"}],
        [{"type": "report", "data": {"x": math.nan}}],
        [{"type": "report", "data": {"x": object()}}],
        ["start"],
    ],
    ids=["none", "no-data", "extra-key", "empty-type", "newline-in-type", "numeric-type", "string-data",
         "nan", "not-json", "string-event"],
)
def test_malformed_events_fail_the_run_and_nothing_is_stored(events):
    service = make_service(MalformedEngine(events))
    with pytest.raises(EngineFailed):
        service.lookup("a", 1, CLIENT, WAIT)
    with pytest.raises(EngineFailed):  # still nothing cached: the engine is asked again
        service.lookup("a", 1, CLIENT, WAIT)


def test_unknown_run_raises_run_not_found():
    with pytest.raises(RunNotFound, match="Run run_x not found"):
        make_service(FakeEngine()).run("run_x")


def test_run_ids_are_unique_even_when_the_clock_stands_still(frozen):
    engine = FakeEngine(failures=3)
    service = make_service(engine)
    run_ids = []
    for _ in range(4):  # three failed runs of one key, then a done one, in one millisecond
        run_ids.append(service.lookup("a", 1, CLIENT, wait_s=0).run_id)
        wait_until(lambda: service.run(run_ids[-1]).status != "running")
    assert len(set(run_ids)) == 4
    assert [service.run(run_id).status for run_id in run_ids] == ["failed"] * 3 + ["done"]


def test_a_hung_engine_fails_its_run_at_the_timeout_and_the_key_recovers():
    gate = threading.Event()
    engine = FakeEngine(gates={"hung": gate})
    service = make_service(engine, engine_timeout_s=0.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        callers = [pool.submit(service.lookup, "hung", 1, CLIENT, WAIT) for _ in range(8)]
        for caller in callers:  # the one that started it and the seven waiting on it: an error, not a hang
            with pytest.raises(EngineFailed, match=r"did not finish scenario hung seed 1 within 0\.2 s"):
                caller.result(timeout=10)
    assert engine.calls == 1
    assert service.lookup("other", 1, CLIENT, WAIT).source == "new"  # other keys were never held up
    gate.set()  # the abandoned run may end now; the key is free and runs again
    assert service.lookup("hung", 1, CLIENT, WAIT).source == "new"


def test_the_event_delay_paces_the_engine_without_changing_its_events():
    settings = test_settings(engine_event_delay_ms=25)
    registry = MemoryRegistry(settings.ttl_ms, settings.max_entries)
    pauses = []
    runner = Runner(registry, as_engine(FakeEngine()), settings, sleep=pauses.append)
    assert runner.slots.take()
    reproduction = runner.reproduce(RunKey("a", 1, "h"), "run_a_1_1")
    assert [event_type for event_type, _ in reproduction.events] == ["start", "token", "token", "report", "done"]
    assert pauses[:5] == [0.025] * 5  # one before each event (and one before learning there is none)
