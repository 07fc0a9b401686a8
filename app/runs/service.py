"""RunService: get or start runs, wait for them, stream them. Knows nothing of HTTP."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass

from app.access import Caller
from app.config import Settings
from app.engine import as_engine
from app.engine.base import Engine
from app.engine.base import ScenarioEngine
from app.engine.identity import CodeHash
from app.errors import BadInput
from app.errors import EngineFailed
from app.errors import RunNotFound
from app.errors import RunPending
from app.errors import ServiceError
from app.errors import Unavailable
from app.evidence.sse import KEEPALIVE
from app.evidence.sse import RETRY
from app.evidence.sse import SseReplay
from app.evidence.sse import paced
from app.evidence.sse import sse_error
from app.evidence.sse import sse_frame
from app.evidence.transcripts import CorruptTranscript
from app.evidence.transcripts import TranscriptCache
from app.logs import DefectLog
from app.models import LedgerEntry
from app.models import RunError
from app.models import RunKey
from app.models import RunPage
from app.models import RunRecord
from app.models import RunState
from app.models import Source
from app.models import cache_key
from app.registry.base import Registry
from app.registry.base import RegistryFull
from app.runs.execution import Execution
from app.runs.execution import LocalExecution
from app.runs.gate import RunGate
from app.runs.limits import NewRunLimit
from app.runs.outage import registry_errors
from app.runs.waiting import WaitingRoom
from app.schemas import AFTER_THE_END
from app.schemas import END_ID
from app.text import printable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lookup:
    """A lookup's answer: the runId, whether this lookup started it, and whether it is done yet."""

    run_id: str
    source: Source
    done: bool


class RunService:
    """Get or start runs, wait for them, and serve them as they stand: their state, their record
    once done, their events live or replayed. Knows nothing about HTTP.

    Built from the parts it shares with the other services (``app.factory``); given only a
    registry, an engine and settings (tests, tools), it makes its own.
    """

    def __init__(
        self, registry: Registry, engine: Engine | ScenarioEngine, settings: Settings,
        new_run_limit: NewRunLimit | None = None, execution: Execution | None = None,
        code_hash: CodeHash | None = None, transcripts: TranscriptCache | None = None, gate: RunGate | None = None,
    ) -> None:
        self._registry = registry
        self._engine = as_engine(engine)
        self._settings = settings
        self.lookup_wait_s = settings.lookup_wait_s  # how long a request waits for a run, unless it says
        self._execution = execution or LocalExecution(registry, self._engine, settings)
        self._transcripts = transcripts or TranscriptCache(settings.transcript_cache_mb * 2**20)
        self._gate = gate or RunGate(self._engine, code_hash or CodeHash(settings),
                                     new_run_limit or NewRunLimit(settings.new_runs_per_minute))
        self._defects = DefectLog(log)
        # Connections that wait (on a run, or streaming one) hold a greenlet each: cheap, but
        # bounded, in all and per client, so that past it the service says so (503, or a 202 at
        # once) instead of running out of room.
        self._waiting = WaitingRoom(settings.max_waiting, settings.max_waiting_per_client)

    # Lookups.

    def lookup(self, scenario_id: str, seed: int, caller: Caller, wait_s: float, admitted: bool = False) -> Lookup:
        """The runId of the key's run, starting one if there is none; waits up to ``wait_s`` for it.

        ``caller`` is who asks: a lookup that would start a run needs its ``run`` scope, and counts
        against its new-run limit (unless ``admitted``: a compare counted its sides together).

        :raises EngineFailed: the run failed while this lookup waited for it.
        :raises Unauthorized, Forbidden: the run would start, and ``caller`` may not start runs.
        :raises RateLimited: the run would start, and ``caller`` has started its share this minute.
        :raises Unavailable: the run would start, and the engine or the registry has no room
            for it (or the backend is down).
        """
        if self._gate.names_scenarios:
            self._gate.check_scenario(scenario_id)
        key = RunKey(scenario_id, seed, self._gate.engine_code_hash)  # a remote engine never described: 503
        with registry_errors:
            if self._engine.available() or self._registry.peek(cache_key(key)):
                found = self._registry.touch(cache_key(key))
            else:  # an engine that does not answer: the miss starts nothing, so it is not counted as one
                found = None
            if found is None:
                run_id, status, started = self._start(key, caller, admitted)
            else:
                run_id, status, started = found.run_id, found.status, False
        source: Source = "new" if started else "cache"
        ending: str | RunError = self._wait_for_end(run_id, wait_s, caller.client) if status == "running" else status
        if ending == "failed" or isinstance(ending, RunError):
            raise self._failure(run_id, ending if isinstance(ending, RunError) else None)
        return Lookup(run_id, source, done=ending == "done")

    def _start(self, key: RunKey, caller: Caller, admitted: bool = False) -> tuple[str, str, bool]:
        caller.require("run")  # before anything is counted or started
        identity = self._gate.ready_engine(key.scenario_id)
        # Described anew since the key was made (a remote engine back after an outage): its key.
        key = RunKey(key.scenario_id, key.seed, self._gate.code_hash_of(identity))
        if not admitted:
            self._gate.admit(caller.limit_key)
        with registry_errors:
            if not self._execution.reserve():
                raise Unavailable("The engine is running and queueing all it can; retry shortly")
        owner = secrets.token_hex(16)
        try:
            started = self._registry.start(key, identity.name, identity.version, owner)
        except RegistryFull as err:
            self._execution.release()
            raise Unavailable(f"The registry is full of runs still running ({err}); retry shortly") from err
        except BaseException:
            self._execution.release()
            raise
        if not started.started or started.identity is None:  # another caller started it between our miss and now
            self._execution.release()
            return started.run_id, started.status, False
        self._execution.execute(started.identity, owner)
        return started.run_id, started.status, True

    @property
    def ttl_minutes(self) -> float:
        """How long a done run stays after its last lookup: what the pages tell a person."""
        return self._settings.ttl_minutes

    def close(self) -> None:
        """Stop every engine execution in flight (the process shuts down)."""
        self._engine.close()

    def _wait_for_end(self, run_id: str, wait_s: float, client: str | None) -> str | RunError:
        """How the run stands after waiting up to ``wait_s`` for it to end (no waiting past the
        capacity, or ``client``'s share of it): ``running``, ``done``, ``failed``, or the error it
        ended with."""
        if wait_s <= 0 or not self._waiting.take(client):
            return "running"
        try:
            with registry_errors:
                live_log = self._registry.open_log(run_id)
            if live_log is not None:
                ending = live_log.wait_end(wait_s)
                return "running" if ending is None else ending
            with registry_errors:
                state = self._registry.get(run_id)
        finally:
            self._waiting.give_back(client)
        # It ended before we looked; if it is gone already (a tiny TTL, a full registry), it was done.
        return state.status if state is not None else "done"

    def _failure(self, run_id: str, error: RunError | None) -> ServiceError:
        """What a lookup that met a failed run answers: the engine's failure (500), or, when the
        registry lost the run (Redis restarted without it), a 503 to look it up again."""
        if error is None:
            with registry_errors:
                state = self._registry.get(run_id)
            error = state.error if state is not None else None
        if error is None:
            return EngineFailed(f"Run {printable(run_id)} failed")
        if error.type == Unavailable.error_type:
            return Unavailable(error.message)
        return EngineFailed(error.message)

    # A run as it stands, and the runs there are.

    def run(self, run_id: str) -> RunState:
        """The run, in whatever state, without renewing it; a done run's transcript is checked
        against its digest the first time this process reads it.

        :raises RunNotFound: the run never existed, expired or was evicted, is no longer
            retained after failing, or its stored transcript is not what its digest says (so
            it is never served as one).
        """
        with registry_errors:
            state = self._registry.get(run_id)
        if state is None:
            raise RunNotFound(f"Run {printable(run_id)} not found")
        if state.record is not None:
            self._checked(state.record)
        return state

    def done_run(self, run_id: str, wait_s: float, caller: Caller | None = None) -> RunRecord:
        """The run's record, waiting up to ``wait_s`` for a run that is not done (within the
        ``caller``'s client's share of the waiting room when it is given).

        :raises RunPending: it is still running.
        :raises EngineFailed: it failed.
        """
        state = self.run(run_id)
        client = caller.client if caller is not None else None
        if state.status == "running" and self._wait_for_end(run_id, wait_s, client) != "running":
            state = self.run(run_id)
        if state.status == "running":
            raise RunPending(state.identity.run_id, state.count)
        if state.status == "failed" or state.record is None:
            raise EngineFailed(state.error.message if state.error else f"Run {printable(run_id)} failed")
        return state.record

    def determinism(self, record: RunRecord) -> LedgerEntry | None:
        """The run's key in the determinism ledger (``None``: the ledger forgot it)."""
        with registry_errors:
            return self._registry.ledger(record.identity.cache_key)

    def runs(self, limit: int, before: str | None) -> RunPage:
        """A page of the runs that can be read, newest first, from the run ``before`` names on."""
        with registry_errors:
            return self._registry.runs(limit, before)

    def _checked(self, record: RunRecord) -> None:
        try:
            self._transcripts.body(record)
        except CorruptTranscript as err:
            self._defects.report(record.run_id, "run %s is not served, and is removed: %s", record.run_id, err)
            with registry_errors:
                self._registry.discard(record.run_id)
            raise RunNotFound(f"Run {printable(record.run_id)} not found") from err

    # Server-Sent Events, live or replayed.

    def stream(
        self, run_id: str, last_event_id: int | None, pace_ms: int, caller: Caller | None = None
    ) -> Iterable[bytes] | None:
        """The run as Server-Sent Events after ``last_event_id``: a done run's transcript (paced
        if asked), or a running run's events so far and then each as it is recorded.

        :returns: ``None`` when the client has seen the run's end (a done run's last position, or
            the message that ends a failed run's stream: ``AFTER_THE_END``): nothing follows, and
            a client told so (``204``) stops reconnecting.
        :raises BadInput: ``last_event_id`` is not a position the run has reached.
        :raises Unavailable: too many connections are waiting already, or too many of the caller's client's.
        """
        state = self.run(run_id)
        if last_event_id == AFTER_THE_END:
            if state.status == "running":
                raise BadInput(f"Last-Event-ID {END_ID} is the end of a run, and run {run_id} has not ended")
            return None
        if state.record is not None and last_event_id == state.count:
            return None
        if last_event_id is not None and not 1 <= last_event_id <= state.count:
            reached = "in this run" if state.status == "done" else "this run has reached"
            raise BadInput(f"Last-Event-ID {last_event_id} is not a position {reached} (1 to {state.count})")
        after = last_event_id or 0
        if state.record is not None and not pace_ms:  # a done run, all at once: nothing waits
            return self._sse_replay(state.record).after(after)
        client = caller.client if caller is not None else None
        if not self._waiting.take(client):
            raise Unavailable("Too many connections are waiting on runs; retry shortly")
        if state.record is not None:
            messages = self._paced(state.record, after, pace_ms)
        else:
            messages = self._live(state.identity.run_id, after)
        return _ReleasingStream(messages, lambda: self._waiting.give_back(client))

    def _sse_replay(self, record: RunRecord) -> SseReplay:
        transcripts = self._transcripts
        return transcripts.representation(record, "sse", lambda: SseReplay.encode(transcripts.encoded_events(record)))

    def _paced(self, record: RunRecord, after: int, pace_ms: int) -> Iterator[bytes]:
        yield RETRY
        yield from paced(self._sse_replay(record).frames(after), pace_ms)

    def _live(self, run_id: str, after: int) -> Iterator[bytes]:
        """The events as they are recorded; byte for byte the replay once the run is done, but
        for ``: keepalive`` comments while none comes."""
        yield RETRY
        position = after
        with registry_errors:
            live_log = self._registry.open_log(run_id)
        ending: object = None
        if live_log is not None:
            while True:
                chunk = live_log.read(position, timeout=self._settings.keepalive_s)
                for event in chunk.events:
                    position += 1
                    yield sse_frame(position, event)
                ending = chunk.ending
                if ending is not None:
                    break
                if not chunk.events:
                    yield KEEPALIVE
        if isinstance(ending, RunError):
            yield sse_error(ending)
            return
        # Done (or the log went with the run's end): the rest comes from its transcript.
        try:
            state = self.run(run_id)
        except RunNotFound:  # gone meanwhile (a tiny TTL, a full registry, a Redis that lost it)
            yield sse_error(RunError("UNAVAILABLE", f"Run {printable(run_id)} is no longer in the registry"))
            return
        if state.record is not None:
            yield self._sse_replay(state.record).messages_after(position)
        elif state.error is not None:
            yield sse_error(state.error)


class _ReleasingStream:
    """A response body that gives its waiting slot back once: when it runs out, or when the
    server closes it (WSGI servers call ``close()`` even for a stream never started, where a
    generator's own ``finally`` would not run)."""

    def __init__(self, messages: Iterator[bytes], release: Callable[[], None]) -> None:
        self._messages = messages
        self._release = release
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._messages
        finally:  # run out, or the client left mid-stream: either way the slot is free again
            self.close()

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._messages.close()  # type: ignore[attr-defined]
            self._release()
