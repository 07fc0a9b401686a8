"""Executing a run: the engine on a real thread, each event recorded as it is yielded.

Two sides per run. The engine side runs on a real thread (engines compute): it pulls the
engine's events one by one, pacing them when asked, checks and encodes each, and hands it over.
The recording side (a greenlet under gevent, a thread otherwise) takes whatever has been handed
over, appends it to the registry in one call, and at the end finishes or fails the run. So an
event is visible to live clients as soon as the engine yields it, and a fast engine's events
are recorded in a few batches rather than one call each.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from app.config import Settings
from app.engine.base import Engine
from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.engine.events import encoded_size
from app.engine.python import exception_reason
from app.models import EncodedEvent
from app.models import LedgerCheck
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunRecord
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.serving.concurrency import bell
from app.serving.concurrency import native_lock
from app.serving.concurrency import native_sleep
from app.serving.concurrency import real_threads

log = logging.getLogger(__name__)
# How long the recorder keeps retrying a registry that does not answer before it gives the run
# up (on Redis its lease then lapses and any process fails it).
REGISTRY_RETRY_S = 5.0
# How often a recorder waiting on a silent engine looks whether the run is still its process's
# (a lease lost meanwhile): then the engine is stopped rather than left to the timeout.
HOLD_CHECK_S = 1.0
T = TypeVar("T")


class EngineFault(Exception):
    """The engine failed, wrote what is not an event or too much, or did not finish in time; the
    message is what clients are told, ``detail`` (a Python engine's traceback) is for the log."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class _Handoff:
    """Events from the engine's thread to the recorder: batched, closed once, abandonable.

    Made by the recording side (its greenlet's hub hears the bell); the engine's thread only
    touches it through ``put`` and ``close``, under a lock of the OS (see app/serving/concurrency.py).
    """

    def __init__(self) -> None:
        self._lock = native_lock()
        self._bell = bell()
        self._items: list[EncodedEvent] = []
        self._notes: list[str] = []
        self._closed = False
        self._fault: EngineFault | None = None
        self._abandoned = False
        self._run: EngineRun | None = None

    def attach(self, run: EngineRun) -> None:
        """The execution the events come from: abandoning the handoff stops it (at once, if it is
        abandoned already)."""
        with self._lock:
            self._run = run
            abandoned = self._abandoned
        if abandoned:
            run.cancel()

    def put(self, item: EncodedEvent) -> bool:
        """:returns: ``False`` once the recorder has given the run up: the engine may stop."""
        with self._lock:
            if self._abandoned:
                return False
            self._items.append(item)
            self._bell.ring()
            return True

    def note(self, line: str) -> None:
        """A line of the engine's standard error, for the recorder to log with the runId (the log's
        handlers take locks a native thread must not share with greenlets: app/serving/concurrency.py)."""
        with self._lock:
            if not self._abandoned:
                self._notes.append(line)
                self._bell.ring()

    def last_words(self) -> str | None:
        with self._lock:
            run = self._run
        return run.last_words() if run is not None else None

    def close(self, fault: EngineFault | None = None) -> None:
        with self._lock:
            self._closed, self._fault = True, fault
            if not self._abandoned:
                self._bell.ring()

    def abandon(self) -> None:
        """The recording side takes no more, whether or not the engine has finished: called at its
        end, it frees the bell (nothing rings it afterwards) and stops an execution still running."""
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            self._bell.close()
            run, closed = self._run, self._closed
        if run is not None and not closed:
            run.cancel()

    def take(self, timeout: float) -> tuple[list[EncodedEvent], bool, EngineFault | None, list[str]]:
        """Everything handed over so far (waiting up to ``timeout`` for something), whether the
        engine is done, its fault if it failed, and its standard error's lines."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._items or self._closed or self._notes:
                    items, self._items = self._items, []
                    notes, self._notes = self._notes, []
                    return items, self._closed, self._fault, notes
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], False, None, []
            self._bell.wait(remaining)  # a ring after the look above ends this wait at once


@dataclass(frozen=True)
class Reproduction:
    """A verification's execution: the events and how long the engine took."""

    events: list[EncodedEvent]
    seconds: float


class Runner:
    """Executes runs and reproductions of runs, a bounded number at once."""

    def __init__(
        self, registry: Registry, engine: Engine, settings: Settings, sleep: Callable[[float], None] = native_sleep,
    ) -> None:
        self._registry = registry
        self._sleep = sleep
        self._engine = engine
        self._timeout_s = settings.engine_timeout_s
        self._delay_s = settings.engine_event_delay_ms / 1000
        self._threads = real_threads(settings.engine_threads, "engine")
        # Runs beyond the threads wait in the pool's queue, up to engine_queue; beyond that a
        # request that would start one is refused at once (503), not left to time out.
        self.slots = Slots(settings.engine_threads + settings.engine_queue)
        # One recorder per run in flight, reused: greenlets under gevent, threads otherwise.
        self._recorders = ThreadPoolExecutor(max_workers=self.slots.capacity, thread_name_prefix="record")

    def execute(self, identity: RunIdentity, owner: str) -> None:
        """Run the engine for ``identity`` and record it under ``owner``, in the background.

        The caller has taken one of ``slots``; it is given back when the engine's thread is
        free again (a hung Python engine keeps its slot: Python cannot stop its thread; an
        engine of another kind is stopped at the timeout).
        """
        handoff = _Handoff()
        started = time.monotonic()
        # Each side in a copy of the request's context: their log lines keep the request's id.
        self._threads.submit(contextvars.copy_context().run, self._produce, identity.key, handoff)
        self._recorders.submit(contextvars.copy_context().run, self._record, identity, owner, handoff, started)

    def record_to_end(self, identity: RunIdentity, owner: str) -> None:
        """``execute``, but returning once the run is recorded (a worker's job runs so)."""
        handoff = _Handoff()
        started = time.monotonic()
        self._threads.submit(contextvars.copy_context().run, self._produce, identity.key, handoff)
        self._record(identity, owner, handoff, started)

    def reproduce(self, key: RunKey, run_id: str) -> Reproduction:
        """Execute the engine for ``key`` again and wait for all its events (the verification of
        ``run_id``, which tags the engine's standard error in the log).

        The caller has taken one of ``slots``, given back as ``execute`` says.

        :raises EngineFault: the engine failed, or did not finish within the engine timeout.
        """
        handoff = _Handoff()
        started = time.monotonic()
        self._threads.submit(contextvars.copy_context().run, self._produce, key, handoff)
        events: list[EncodedEvent] = []
        deadline = started + self._timeout_s
        try:
            while True:
                batch, closed, fault, notes = handoff.take(deadline - time.monotonic())
                events.extend(batch)
                _log_stderr(run_id, notes, verifying=True)
                if closed or time.monotonic() >= deadline:
                    break
            if not closed:
                fault = self._timed_out(key, handoff.last_words())
        finally:
            handoff.abandon()
        seconds = time.monotonic() - started
        self._count_engine_run(seconds, failed=fault is not None)
        if fault is not None:
            log.error("verification of run %s: %s", run_id, fault, extra=_fault_fields(run_id, fault))
            raise fault
        return Reproduction(events, seconds)

    # The engine's side, on a real thread: nothing here logs (see _Handoff.note).

    def _produce(self, key: RunKey, handoff: _Handoff) -> None:
        which = f"scenario {key.scenario_id} seed {key.seed}"
        run: EngineRun | None = None
        try:
            run = self._engine.run(key.scenario_id, key.seed, handoff.note)
            handoff.attach(run)
            size = 0
            for encoded in self._paced(run):
                size += encoded_size(encoded)
                if size > MAX_TRANSCRIPT_BYTES:
                    raise EngineFault(f"The engine returned over {MAX_TRANSCRIPT_BYTES} bytes of events for {which}")
                if not handoff.put(encoded):
                    return  # given up (timed out, or no longer this process's): nobody records it any more
            handoff.close()
        except EngineFault as fault:
            handoff.close(fault)
        except EngineError as err:
            handoff.close(EngineFault(f"The engine failed to run {which}: {err}", _traceback(err.__cause__)))
        except Exception as err:  # an adapter's own failure: reported as the run's, never recorded as one
            handoff.close(EngineFault(f"The engine failed to run {which}: {exception_reason(err)}", _traceback(err)))
        finally:
            try:
                if run is not None:
                    run.end()  # what of it remains is stopped (a process group), before the slot is free
            finally:
                self.slots.give_back()

    def _paced(self, events: EngineRun) -> Iterator[EncodedEvent]:
        """The engine's events, each after ``RUN_REGISTRY_ENGINE_EVENT_DELAY_MS`` as a streaming engine would."""
        iterator = iter(events)
        while True:
            if self._delay_s:
                self._sleep(self._delay_s)
            try:
                yield next(iterator)
            except StopIteration:
                return

    # The recording side.

    def _record(self, identity: RunIdentity, owner: str, handoff: _Handoff, started: float) -> None:
        try:
            self._record_events(identity, owner, handoff, started)
        except BaseException:
            # The process is being stopped under the run (an RQ worker's warm shutdown raises in its
            # horse): the run fails now, rather than when its lease lapses, and its engine stops.
            handoff.abandon()
            self._with_retries(lambda: self._registry.fail(identity.run_id, owner, RunError(
                "ENGINE_ERROR", f"Run {identity.run_id} was given up: the process executing it is stopping")))
            raise
        finally:
            handoff.abandon()

    def _record_events(self, identity: RunIdentity, owner: str, handoff: _Handoff, started: float) -> None:
        run_id = identity.run_id
        events: list[EncodedEvent] = []
        deadline = started + self._timeout_s
        fault: EngineFault | None = None
        while True:
            batch, closed, fault, notes = handoff.take(min(deadline - time.monotonic(), HOLD_CHECK_S))
            _log_stderr(run_id, notes)
            if batch:
                appended = self._with_retries(
                    lambda batch=batch: self._registry.append(run_id, owner, len(events) + 1, batch)  # type: ignore[misc]
                )
                if not appended:
                    log.error("run %s is no longer this process's to record; its engine's events are dropped", run_id)
                    handoff.abandon()  # the engine may stop now, not after the fail's retries
                    # Failed, if it is still ours at all (a registry that did not answer for
                    # REGISTRY_RETRY_S), rather than left running on a lease this process renews.
                    self._with_retries(lambda: self._registry.fail(
                        run_id, owner, RunError("ENGINE_ERROR", f"Run {run_id} could not be recorded")))
                    return
                events.extend(batch)
            elif not closed and not self._registry.holds(run_id, owner):
                log.error("run %s is no longer this process's (its lease lapsed); its engine is stopped", run_id)
                return  # _record abandons the handoff: the engine is stopped
            if closed:
                break
            if time.monotonic() >= deadline:
                fault = self._timed_out(identity.key, handoff.last_words())
                break
        seconds = time.monotonic() - started
        self._count_engine_run(seconds, failed=fault is not None)
        if fault is None:
            record = RunRecord.create(identity, events)
            check = self._with_retries(lambda: self._registry.finish(run_id, owner, record))
            log.info("engine ran scenario %s seed %s: %d events in %.1f ms", identity.scenario_id, identity.seed,
                     len(events), seconds * 1000)
            ended = check is not None
            if check is not None:
                log_divergence(identity, run_id, record.events_sha256, check)
        else:
            log.error("run %s failed: %s", run_id, fault, extra=_fault_fields(run_id, fault))
            ended = bool(self._with_retries(
                lambda: self._registry.fail(run_id, owner, RunError("ENGINE_ERROR", str(fault)))
            ))
        if not ended:
            log.error("run %s could not be %s: it is no longer this process's", run_id,
                      "finished" if fault is None else "failed")

    def _timed_out(self, key: RunKey, last_words: str | None) -> EngineFault:
        which = f"scenario {key.scenario_id} seed {key.seed}"
        words = f"; its last line on standard error: {last_words}" if last_words else ""
        return EngineFault(f"The engine did not finish {which} within {self._timeout_s:g} s{words}")

    def _with_retries(self, call: Callable[[], T]) -> T | None:
        """``call``, retried while the registry does not answer, for up to REGISTRY_RETRY_S (then ``None``)."""
        deadline = time.monotonic() + REGISTRY_RETRY_S
        pause = 0.05
        while True:
            try:
                return call()
            except RegistryUnavailable:
                if time.monotonic() >= deadline:
                    log.error("the registry did not answer for %g s; a run is given up", REGISTRY_RETRY_S)
                    return None
                threading.Event().wait(pause)
                pause = min(pause * 2, 1.0)

    def _count_engine_run(self, seconds: float, failed: bool) -> None:
        # Statistics are worth less than the run: an outage here is the run's to report.
        try:
            self._registry.record_engine_run(seconds * 1000, failed)
        except RegistryUnavailable:
            log.warning("engine run not counted: the registry is unavailable")


def _traceback(err: BaseException | None) -> str | None:
    """A Python engine's traceback, formatted where it was raised (it is logged elsewhere)."""
    return "".join(traceback.format_exception(err)) if err is not None else None


def _fault_fields(run_id: str, fault: EngineFault) -> dict[str, str]:
    return {"runId": run_id, **({"exception": fault.detail} if fault.detail else {})}


def _log_stderr(run_id: str, lines: list[str], verifying: bool = False) -> None:
    """The engine's standard error in the service's log, one line each, tagged with the runId."""
    for line in lines:
        log.info("engine stderr%s: %s", " (verifying)" if verifying else "", line,
                 extra={"runId": run_id, "stream": "stderr"})


def log_divergence(identity: RunIdentity, run_id: str, events_sha256: str, check: LedgerCheck) -> None:
    """One WARNING line for a transcript that differs from its key's reference (section 14)."""
    if check.result != "diverged":
        return
    reference = check.entry
    log.warning(
        "determinism: scenario %s seed %s (cacheKey %s, engineCodeHash %s) diverged: run %s has eventsSha256 %s,"
        " the key's reference run %s has %s", identity.scenario_id, identity.seed, identity.cache_key,
        identity.engine_code_hash, run_id, events_sha256, reference.reference_run_id, reference.reference_sha256,
        extra={"cacheKey": identity.cache_key, "runId": run_id, "eventsSha256": events_sha256,
               "referenceRunId": reference.reference_run_id, "referenceSha256": reference.reference_sha256},
    )


class Slots:
    """A count of things in use, up to a capacity; taking one never waits."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = native_lock()  # given back on an engine's native thread
        self.in_use = 0

    def take(self) -> bool:
        with self._lock:
            if self.in_use >= self.capacity:
                return False
            self.in_use += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.in_use -= 1
