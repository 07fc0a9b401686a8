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
import re
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from app.concurrency import bell
from app.concurrency import native_lock
from app.concurrency import native_sleep
from app.concurrency import real_threads
from app.config import Settings
from app.engine.base import Engine
from app.engine.base import Event
from app.models import EncodedEvent
from app.models import LedgerCheck
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunRecord
from app.models import canonical_json
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable

log = logging.getLogger(__name__)
# An event type becomes an SSE "event:" line: no spaces, no newlines.
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# The largest transcript recorded, and so the most that reading one back may decompress to.
MAX_TRANSCRIPT_BYTES = 32 * 1024 * 1024
# How long the recorder keeps retrying a registry that does not answer before it gives the run
# up (on Redis its lease then lapses and any process fails it).
REGISTRY_RETRY_S = 5.0
T = TypeVar("T")


class EngineFault(Exception):
    """The engine raised, returned a malformed event, too many bytes, or did not finish in time."""


class _Handoff:
    """Events from the engine's thread to the recorder: batched, closed once, abandonable.

    Made by the recording side (its greenlet's hub hears the bell); the engine's thread only
    touches it through ``put`` and ``close``, under a lock of the OS (see app/concurrency.py).
    """

    def __init__(self) -> None:
        self._lock = native_lock()
        self._bell = bell()
        self._items: list[EncodedEvent] = []
        self._closed = False
        self._fault: EngineFault | None = None
        self._abandoned = False

    def put(self, item: EncodedEvent) -> bool:
        """:returns: ``False`` once the recorder has given the run up: the engine may stop."""
        with self._lock:
            if self._abandoned:
                return False
            self._items.append(item)
            self._bell.ring()
            return True

    def close(self, fault: EngineFault | None = None) -> None:
        with self._lock:
            self._closed, self._fault = True, fault
            if not self._abandoned:
                self._bell.ring()

    def abandon(self) -> None:
        """The recording side takes no more, whether or not the engine has finished: called once,
        at its end, it frees the bell (nothing rings it afterwards)."""
        with self._lock:
            if not self._abandoned:
                self._abandoned = True
                self._bell.close()

    def take(self, timeout: float) -> tuple[list[EncodedEvent], bool, EngineFault | None]:
        """Everything handed over so far (waiting up to ``timeout`` for something), whether the
        engine is done, and its fault if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._items or self._closed:
                    items, self._items = self._items, []
                    return items, self._closed, self._fault
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], False, None
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
        free again (a hung engine keeps its slot: Python cannot stop its thread).
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

    def reproduce(self, key: RunKey) -> Reproduction:
        """Execute the engine for ``key`` again and wait for all its events (a verification).

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
                batch, closed, fault = handoff.take(deadline - time.monotonic())
                events.extend(batch)
                if closed or time.monotonic() >= deadline:
                    break
        finally:
            handoff.abandon()
        seconds = time.monotonic() - started
        if not closed:
            fault = self._timed_out(key)
        self._count_engine_run(seconds, failed=fault is not None)
        if fault is not None:
            raise fault
        return Reproduction(events, seconds)

    # The engine's side, on a real thread.

    def _produce(self, key: RunKey, handoff: _Handoff) -> None:
        which = f"scenario {key.scenario_id} seed {key.seed}"
        try:
            size = 0
            for event in self._paced(self._engine.run(key.scenario_id, key.seed)):
                try:
                    encoded = encoded_event(event)
                except MalformedEvent as malformed:
                    log.error("engine %s returned a malformed event for %s: %s", self._engine.name, which, malformed)
                    raise EngineFault(f"The engine returned malformed events for {which}") from None
                size += len(encoded[1]) + len(encoded[0]) + 20
                if size > MAX_TRANSCRIPT_BYTES:
                    log.error("engine %s returned over %d bytes of events for %s", self._engine.name, size, which)
                    raise EngineFault(f"The engine returned over {MAX_TRANSCRIPT_BYTES} bytes of events for {which}")
                if not handoff.put(encoded):
                    return  # given up (timed out): nobody records this run any more
            handoff.close()
        except EngineFault as fault:
            handoff.close(fault)
        except Exception:  # a plugin's failure of any kind is reported, never recorded as a run
            log.exception("engine %s failed for %s", self._engine.name, which)
            handoff.close(EngineFault(f"The engine failed to run {which}"))
        finally:
            self.slots.give_back()

    def _paced(self, events: object) -> Iterator[Event]:
        """The engine's events, each after ``RUN_REGISTRY_ENGINE_EVENT_DELAY_MS`` as a streaming engine would."""
        iterator = iter(events)  # type: ignore[call-overload]
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
        finally:
            handoff.abandon()

    def _record_events(self, identity: RunIdentity, owner: str, handoff: _Handoff, started: float) -> None:
        run_id = identity.run_id
        events: list[EncodedEvent] = []
        deadline = started + self._timeout_s
        fault: EngineFault | None = None
        while True:
            batch, closed, fault = handoff.take(deadline - time.monotonic())
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
            if closed:
                break
            if time.monotonic() >= deadline:
                fault = self._timed_out(identity.key)
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
            ended = bool(self._with_retries(
                lambda: self._registry.fail(run_id, owner, RunError("ENGINE_ERROR", str(fault)))
            ))
        if not ended:
            log.error("run %s could not be %s: it is no longer this process's", run_id,
                      "finished" if fault is None else "failed")

    def _timed_out(self, key: RunKey) -> EngineFault:
        which = f"scenario {key.scenario_id} seed {key.seed}"
        log.error("engine %s did not finish %s within %g s", self._engine.name, which, self._timeout_s)
        return EngineFault(f"The engine did not finish {which} within {self._timeout_s:g} s")

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


class MalformedEvent(ValueError):
    """An engine's event is not one the service records; the message says why."""


def encoded_event(event: object) -> EncodedEvent:
    """A well-formed event, exactly ``{"type": name, "data": object}``, as (type, data's canonical JSON).

    :raises MalformedEvent: it is not one.
    """
    if not isinstance(event, dict) or event.keys() != {"type", "data"}:
        raise MalformedEvent('it is not an object of exactly "type" and "data"')
    if not isinstance(event["type"], str) or not _EVENT_TYPE.fullmatch(event["type"]):
        raise MalformedEvent("its type is not a name (a letter, then up to 63 of A-Z a-z 0-9 . _ -)")
    if not isinstance(event["data"], dict):
        raise MalformedEvent("its data is not a JSON object")
    try:
        return event["type"], canonical_json(event["data"])
    except (TypeError, ValueError) as err:
        raise MalformedEvent(f"its data is not JSON ({err})") from None
