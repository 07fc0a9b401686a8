"""RunService over the in-memory registry and fake engines, without Flask."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.errors import EngineFailed
from app.errors import RunNotFound
from app.registry.memory import MemoryRegistry
from app.service import RunService
from tests.conftest import test_settings
from tests.fakes import FakeEngine
from tests.fakes import MalformedEngine


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
        return service.lookup("hot", 7, "test-client")

    with ThreadPoolExecutor(max_workers=64) as pool:
        futures = [pool.submit(lookup) for _ in range(64)]
        assert engine.started.wait(timeout=30)
        gate.set()
        results = [future.result(timeout=30) for future in futures]
    assert engine.calls == 1
    assert [source for _, source in results].count("new") == 1
    assert len({run_id for run_id, _ in results}) == 1


def test_a_slow_engine_run_of_one_key_does_not_delay_another_key():
    gate = threading.Event()
    engine = FakeEngine(gates={"slow": gate})
    service = make_service(engine)
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(service.lookup, "slow", 1, "test-client")
        assert engine.started.wait(timeout=30)
        run_id, source = service.lookup("fast", 1, "test-client")  # answered while "slow" is still running
        assert source == "new" and not slow.done()
        assert service.run(run_id).record.scenario_id == "fast"
        gate.set()
        assert slow.result(timeout=30)[1] == "new"


def test_failing_engine_raises_engine_failed_and_caches_nothing():
    engine = FakeEngine(failures=1)
    service = make_service(engine)
    with pytest.raises(EngineFailed, match="scenario a seed 1"):
        service.lookup("a", 1, "test-client")
    assert service.lookup("a", 1, "test-client")[1] == "new"
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
def test_malformed_events_are_rejected_before_anything_is_stored(events):
    service = make_service(MalformedEngine(events))
    with pytest.raises(EngineFailed):
        service.lookup("a", 1, "test-client")
    with pytest.raises(EngineFailed):  # still nothing cached: the engine is asked again
        service.lookup("a", 1, "test-client")


def test_unknown_run_raises_run_not_found():
    with pytest.raises(RunNotFound, match="Run run_x not found"):
        make_service(FakeEngine()).run("run_x")


def test_run_ids_are_unique_even_when_the_clock_stands_still(frozen):
    service = make_service(FakeEngine())
    run_ids = {service.lookup(f"s{index}", 1, "test-client")[0].rsplit("_", 1)[1] for index in range(50)}
    assert len(run_ids) == 50


def test_a_hung_engine_fails_its_callers_at_the_timeout_and_the_key_recovers():
    gate = threading.Event()
    engine = FakeEngine(gates={"hung": gate})
    service = make_service(engine, engine_timeout_s=0.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        callers = [pool.submit(service.lookup, "hung", 1, "test-client") for _ in range(8)]
        for caller in callers:  # the one running it and the seven waiting on it: an error, not a hang
            with pytest.raises(EngineFailed, match=r"did not finish scenario hung seed 1 within 0\.2 s"):
                caller.result(timeout=10)
    assert engine.calls == 1
    assert service.lookup("other", 1, "test-client")[1] == "new"  # other keys were never held up
    gate.set()  # the abandoned run may end now; the key is free and runs again
    assert service.lookup("hung", 1, "test-client")[1] == "new"
