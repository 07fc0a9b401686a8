"""RunService: get-or-start runs, wait for them, and serve what they recorded. Knows nothing of HTTP."""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
import zipfile
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from app.access import Caller
from app.concurrency import off_the_hub
from app.config import Settings
from app.engine import as_engine
from app.engine.base import Engine
from app.engine.base import EngineUnavailable
from app.engine.base import Identity
from app.engine.base import ScenarioEngine
from app.engine.base import UnknownScenario
from app.engine.identity import CodeHash
from app.errors import BadInput
from app.errors import EngineFailed
from app.errors import EngineMismatch
from app.errors import RateLimited
from app.errors import RunNotFound
from app.errors import RunPending
from app.errors import RunRunning
from app.errors import ServiceError
from app.errors import Unavailable
from app.evidence.attestation import ATTESTATION
from app.evidence.csv_export import events_csv
from app.evidence.diff import RunFacts
from app.evidence.diff import TranscriptDiff
from app.evidence.diff import diff_facts
from app.evidence.diff import first_difference
from app.evidence.snapshot import pack_files
from app.evidence.snapshot import snapshot_zip
from app.evidence.sse import END_ID
from app.evidence.sse import KEEPALIVE
from app.evidence.sse import RETRY
from app.evidence.sse import SseReplay
from app.evidence.sse import paced
from app.evidence.sse import sse_error
from app.evidence.sse import sse_frame
from app.evidence_keys import EvidenceKeys
from app.execution import Execution
from app.execution import LocalExecution
from app.limits import NewRunLimit
from app.logs import DefectLog
from app.metrics import FleetFigures
from app.models import LedgerEntry
from app.models import LedgerFigures
from app.models import RegistryStats
from app.models import RunError
from app.models import RunKey
from app.models import RunPage
from app.models import RunRecord
from app.models import RunState
from app.models import Source
from app.models import cache_key
from app.models import encode_events
from app.registry.base import Registry
from app.registry.base import RegistryFull
from app.registry.base import RegistryUnavailable
from app.runner import EngineFault
from app.runner import log_divergence
from app.schemas import AFTER_THE_END
from app.signing import PublicKey
from app.signing import SigningKey
from app.single_flight import SingleFlight
from app.text import printable
from app.transcripts import CorruptTranscript
from app.transcripts import TranscriptCache
from app.waiting import WaitingRoom

log = logging.getLogger(__name__)
# /registry/stats lists this many scenarios by entries; the rest are counted, not named, so the
# answer stays small however many scenarios a registry holds.
STATS_TOP_SCENARIOS = 20
T = TypeVar("T")


@dataclass(frozen=True)
class Lookup:
    """A lookup's answer: the runId, whether this lookup started it, and whether it is done yet."""

    run_id: str
    source: Source
    done: bool


class RunService:
    """Get-or-start runs and serve their transcripts, complete or live. Knows nothing about HTTP."""

    def __init__(
        self, registry: Registry, engine: Engine | ScenarioEngine, settings: Settings,
        new_run_limit: NewRunLimit | None = None, execution: Execution | None = None,
        code_hash: CodeHash | None = None,
    ) -> None:
        self._registry = registry
        self._engine = as_engine(engine)
        self._settings = settings
        self.lookup_wait_s = settings.lookup_wait_s  # how long a request waits for a run, unless it says
        self._backend = "redis" if settings.shared_registry else "memory"
        self._code_hash = code_hash or CodeHash(settings)
        self._execution = execution or LocalExecution(registry, self._engine, settings)
        # Done runs' bodies, replays, CSVs and packs kept per process (RUN_REGISTRY_TRANSCRIPT_CACHE_MB):
        # the default engine's four come to about 48 KB a run, so 32 MiB holds the 700 or so runs
        # being read at any time.
        self._transcripts = TranscriptCache(settings.transcript_cache_mb * 2**20)
        self._evidence_keys = EvidenceKeys(settings.signing_key, settings.previous_public_keys)
        self._defects = DefectLog(log)
        self._new_runs = new_run_limit or NewRunLimit(settings.new_runs_per_minute)
        self._verifications: SingleFlight[Verification] = SingleFlight()
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
        if self._engine.names_scenarios:
            self._known_scenario(scenario_id)
        key = RunKey(scenario_id, seed, self.engine_code_hash)  # a remote engine never described: 503
        with _registry_errors:
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
        identity = self._ready_engine(key.scenario_id)
        # Described anew since the key was made (a remote engine back after an outage): its key.
        key = RunKey(key.scenario_id, key.seed, self._code_hash.of(identity))
        if not admitted:
            self._admit(caller.limit_key)
        with _registry_errors:
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

    def _ready_engine(self, scenario_id: str) -> Identity:
        """The engine's identity, when it has the scenario and can take a run now.

        :raises BadInput: it has no such scenario.
        :raises Unavailable: it cannot take a run (a remote engine that does not answer).
        """
        self._known_scenario(scenario_id)
        try:
            return self._engine.ready()
        except EngineUnavailable as err:
            raise Unavailable(str(err)) from None

    def _known_scenario(self, scenario_id: str) -> None:
        """:raises BadInput: the engine has no such scenario (an LLM engine's file does not name it)."""
        try:
            self._engine.check_scenario(scenario_id)
        except UnknownScenario as err:
            raise BadInput(str(err)) from None

    @property
    def engine_code_hash(self) -> str:
        """The engineCodeHash of the engine as it is now (a remote engine's may change).

        :raises Unavailable: a remote engine that has never been reached (its code is unknown).
        """
        try:
            return self._code_hash.of(self._engine.identity())
        except EngineUnavailable as err:
            raise Unavailable(str(err)) from None

    def close(self) -> None:
        """Stop every engine execution in flight (the process shuts down)."""
        self._engine.close()

    def _admit(self, limit_key: str, cost: int = 1) -> None:
        """Count ``cost`` engine executions against a caller's limit (``Caller.limit_key``), before anything starts."""
        with _registry_errors:
            self._new_runs.admit(limit_key, cost)

    def _wait_for_end(self, run_id: str, wait_s: float, client: str | None) -> str | RunError:
        """How the run stands after waiting up to ``wait_s`` for it to end (no waiting past the
        capacity, or ``client``'s share of it): ``running``, ``done``, ``failed``, or the error it
        ended with."""
        if wait_s <= 0 or not self._waiting.take(client):
            return "running"
        try:
            with _registry_errors:
                live_log = self._registry.open_log(run_id)
            if live_log is not None:
                ending = live_log.wait_end(wait_s)
                return "running" if ending is None else ending
            with _registry_errors:
                state = self._registry.get(run_id)
        finally:
            self._waiting.give_back(client)
        # It ended before we looked; if it is gone already (a tiny TTL, a full registry), it was done.
        return state.status if state is not None else "done"

    def _failure(self, run_id: str, error: RunError | None) -> ServiceError:
        """What a lookup that met a failed run answers: the engine's failure (500), or, when the
        registry lost the run (Redis restarted without it), a 503 to look it up again."""
        if error is None:
            with _registry_errors:
                state = self._registry.get(run_id)
            error = state.error if state is not None else None
        if error is None:
            return EngineFailed(f"Run {printable(run_id)} failed")
        if error.type == Unavailable.error_type:
            return Unavailable(error.message)
        return EngineFailed(error.message)

    # A run and its complete transcript.

    def run(self, run_id: str) -> RunState:
        """The run, in whatever state, without renewing it; a done run's transcript is checked
        against its digest the first time this process reads it.

        :raises RunNotFound: the run never existed, expired or was evicted, is no longer
            retained after failing, or its stored transcript is not what its digest says (so
            it is never served as one).
        """
        with _registry_errors:
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

    def events_body(self, record: RunRecord, gzip_ok: bool) -> bytes:
        """A done run's /events JSON body: gzip-compressed as stored when the client takes that, else plain."""
        return record.body_gzip if gzip_ok else self._transcripts.body(record)

    def export_csv(self, record: RunRecord) -> bytes:
        """A done run's transcript as spreadsheet-safe CSV."""
        return self._transcripts.representation(record, "csv", lambda: events_csv(self._transcripts.events(record)))

    def snapshot(self, record: RunRecord, key: SigningKey) -> bytes:
        """A done run's ZIP evidence pack; the same bytes every time for the same run and ``key``."""
        return self._transcripts.representation(record, f"zip {key.key_id}", lambda: snapshot_zip(
            record, pack_files(record, self._transcripts.events_json(record), self.export_csv(record), key)
        ))

    def attestation(self, record: RunRecord, key: SigningKey) -> bytes:
        """A done run's signed attestation: the pack's attestation.json, read from the pack (made once)."""
        return self._transcripts.representation(record, f"attestation {key.key_id}", lambda: zipfile.ZipFile(
            io.BytesIO(self.snapshot(record, key))).read(ATTESTATION))

    def signing_key(self) -> SigningKey:
        """The key evidence is signed with (the ETag of a signed representation names it)."""
        return self._evidence_keys.current()

    def public_keys(self) -> list[PublicKey]:
        return self._evidence_keys.public_keys()

    def announce_signing_key(self) -> None:
        self._evidence_keys.announce()

    def _sse_replay(self, record: RunRecord) -> SseReplay:
        transcripts = self._transcripts
        return transcripts.representation(record, "sse", lambda: SseReplay.encode(transcripts.encoded_events(record)))

    def _checked(self, record: RunRecord) -> None:
        try:
            self._transcripts.body(record)
        except CorruptTranscript as err:
            self._defects.report(record.run_id, "run %s is not served, and is removed: %s", record.run_id, err)
            with _registry_errors:
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

    def _paced(self, record: RunRecord, after: int, pace_ms: int) -> Iterator[bytes]:
        yield RETRY
        yield from paced(self._sse_replay(record).frames(after), pace_ms)

    def _live(self, run_id: str, after: int) -> Iterator[bytes]:
        """The events as they are recorded; byte for byte the replay once the run is done, but
        for ``: keepalive`` comments while none comes."""
        yield RETRY
        position = after
        with _registry_errors:
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

    # Comparing and verifying.

    def compare(self, left: tuple[str, int], right: tuple[str, int], caller: Caller, wait_s: float,
                start: bool = True) -> Comparison:
        """Look both runs up (get or start, renewing them), wait for them, and diff their transcripts.

        The sides that would start a run need the caller's ``run`` scope and are counted against
        its new-run limit together, before either starts (at the limit's edge neither does).
        With ``start`` false a side that has no run is not started: the comparison only reads.

        :raises RunNotFound: ``start`` is false, and a side has no run.
        :raises RunPending: a side is still running after the wait.
        :raises Unauthorized, Forbidden: a side would start a run, and ``caller`` may not.
        :raises RateLimited: the sides that would start runs are more than the caller's budget.
        """
        sides = {"left": left, "right": right}
        with _registry_errors:
            missing = {name: side for name, side in sides.items()
                       if not self._registry.peek(cache_key(RunKey(*side, self.engine_code_hash)))}
        if missing and not start:
            name, (scenario_id, seed) = next(iter(missing.items()))
            raise RunNotFound(f"{name}: scenario {scenario_id} seed {seed} has no run; compare with"
                              ' "start": true to start it')
        if missing:
            for scenario_id, _ in missing.values():
                if self._engine.names_scenarios:
                    self._known_scenario(scenario_id)
            caller.require("run")
            self._admit(caller.limit_key, cost=len(set(missing.values())))
        # Both started first, then waited for together: the wait is the lookup's, not twice it.
        left_lookup = self.lookup(*left, caller, wait_s=0, admitted=bool(missing))
        right_lookup = self.lookup(*right, caller, wait_s=0, admitted=bool(missing))
        deadline = time.monotonic() + wait_s
        left_record = self.done_run(left_lookup.run_id, wait_s, caller)
        right_record = self.done_run(right_lookup.run_id, max(0.0, deadline - time.monotonic()), caller)
        identical = left_record.events_digest == right_record.events_digest
        return Comparison(left_record, left_lookup.source, right_record, right_lookup.source,
                          diff_facts(self._facts(left_record), self._facts(right_record), identical))

    def _facts(self, record: RunRecord) -> RunFacts:
        """A done run's facts for comparing it, made once (off the hub: a large transcript takes
        a while) and kept with its other representations."""
        events_json = self._transcripts.events_json(record)
        return self._transcripts.representation(
            record, "facts", lambda: off_the_hub(lambda: RunFacts.of(json.loads(events_json))))

    def verify(self, run_id: str, caller: Caller) -> Verification:
        """Execute the engine again and check the new transcript against the recorded bytes.

        Verifications of one run asked for at once share one execution (and its answer); the
        one that executes needs the caller's ``run`` scope and counts against its new-run limit.

        :raises RunRunning: the run is not done: there is nothing to verify yet.
        :raises EngineMismatch: the run was recorded by other engine code than this one.
        :raises EngineFailed: the run failed, or the engine failed this time.
        :raises Unauthorized, Forbidden: ``caller`` may not start executions.
        :raises RateLimited: ``caller`` has started its share of executions this minute.
        :raises Unavailable: the engine has no room for another execution.
        """
        caller.require("run")
        state = self.run(run_id)
        if state.status == "running":
            raise RunRunning(f"Run {printable(run_id)} is still running; verify it once it is done")
        record = self.done_run(run_id, 0)
        if record.identity.engine_code_hash != self.engine_code_hash:
            raise EngineMismatch(
                f"Run {run_id} was recorded under engineCodeHash {record.identity.engine_code_hash};"
                f" this service runs {self.engine_code_hash}"
            )
        verification, _ = _as_own_client(
            caller.limit_key, lambda: self._verifications.run(record.run_id, lambda: self._reproduce(record, caller))
        )
        return verification

    def _reproduce(self, record: RunRecord, caller: Caller) -> Verification:
        self._ready_engine(record.identity.scenario_id)
        self._admit(caller.limit_key)
        with _registry_errors:
            if not self._execution.reserve():
                raise Unavailable("The engine is running and queueing all it can; retry shortly")
            try:
                reproduction = self._execution.reproduce(record.identity.key, record.run_id)
            except EngineFault as fault:
                raise EngineFailed(str(fault)) from fault
        replayed_json = encode_events(reproduction.events)
        recorded_json = self._transcripts.events_json(record)
        reproducible = replayed_json == recorded_json
        replayed = RunRecord.create(record.identity, reproduction.events)
        with _registry_errors:
            check = self._registry.check_reproduction(record, replayed.events_digest)
        log_divergence(record.identity, record.run_id, replayed.events_sha256, check)
        return Verification(
            run_id=record.run_id,
            reproducible=reproducible,
            recorded_sha256=record.events_sha256,
            replayed_sha256=replayed.events_sha256,
            first_difference=None if reproducible else first_difference(
                self._transcripts.events(record), self._transcripts.events(replayed)
            ),
            recorded_count=record.event_count,
            replayed_count=replayed.event_count,
            duration_ms=round(reproduction.seconds * 1000, 3),
            determinism=check.entry,
        )

    def runs(self, limit: int, before: str | None) -> RunPage:
        """A page of the runs that can be read, newest first, from the run ``before`` names on."""
        with _registry_errors:
            return self._registry.runs(limit, before)

    def determinism(self, record: RunRecord) -> LedgerEntry | None:
        """The run's key in the determinism ledger (``None``: the ledger forgot it)."""
        with _registry_errors:
            return self._registry.ledger(record.identity.cache_key)

    def ledger_figures(self, latest: int) -> LedgerFigures:
        with _registry_errors:
            return self._registry.ledger_figures(latest)

    def verification_callers(self, run_id: str) -> int:
        """How many requests share the run's verification now (0 when none is running)."""
        return self._verifications.callers(run_id)

    def engine_slots_in_use(self) -> int:
        """Engine executions running or waiting in this process now, or queued for workers."""
        with _registry_errors:
            return self._execution.in_use()

    def workers(self) -> int | None:
        """Workers serving this engineCodeHash (queue execution), or ``None`` (local)."""
        with _registry_errors:
            return self._execution.workers()

    # Operations.

    @property
    def ttl_minutes(self) -> float:
        """How long a done run stays after its last lookup: what the pages tell a person."""
        return self._settings.ttl_minutes

    def stats_report(self) -> StatsReport:
        """What the registry counts (with a shared backend, for the whole fleet), with its settings;
        entries by scenario for the ``STATS_TOP_SCENARIOS`` scenarios with the most."""
        with _registry_errors:
            stats = self._registry.stats(top_scenarios=STATS_TOP_SCENARIOS)
            workers = self._execution.workers()
        return StatsReport(stats, self._backend, self._settings.ttl_minutes, self._settings.execution, workers)

    def fleet_figures(self) -> FleetFigures:
        """What a metrics scrape reports: the registry's counts (without any scenario: cheaply),
        and with queue execution the queue's depth and its workers."""
        with _registry_errors:
            stats = self._registry.stats(top_scenarios=0)
            ledger = self._registry.ledger_figures(latest=0)
            workers = self._execution.workers()
            queued = self._execution.in_use() if workers is not None else None
        return FleetFigures(stats, ledger, queued, workers)

    def readiness(self) -> Readiness:
        """:raises Unavailable: the registry backend (or the job queue), or a remote engine, does not answer."""
        with _registry_errors:
            self._registry.ping()
            workers = self._execution.workers()
        try:
            identity = self._engine.ready()
        except EngineUnavailable as err:
            raise Unavailable(str(err)) from None
        return Readiness(
            backend=self._backend,
            engine_kind=self._engine.kind,
            engine_name=identity.name,
            engine_version=identity.version,
            engine_code_hash=self._code_hash.of(identity),
            execution=self._settings.execution,
            workers=workers,
        )


@dataclass(frozen=True)
class StatsReport:
    stats: RegistryStats
    backend: str
    ttl_minutes: float
    execution: str
    workers: int | None


@dataclass(frozen=True)
class Readiness:
    backend: str
    engine_kind: str
    engine_name: str
    engine_version: str
    engine_code_hash: str
    execution: str
    workers: int | None  # with queue execution: workers serving this engineCodeHash


@dataclass(frozen=True)
class Comparison:
    left: RunRecord
    left_source: Source
    right: RunRecord
    right_source: Source
    diff: TranscriptDiff


@dataclass(frozen=True)
class Verification:
    run_id: str
    reproducible: bool
    recorded_sha256: str
    replayed_sha256: str
    first_difference: int | None
    recorded_count: int
    replayed_count: int
    duration_ms: float
    determinism: LedgerEntry  # the key's, after this check


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


def _as_own_client(limit_key: str, attempt: Callable[[], T]) -> T:
    """Run ``attempt``, and once more if it failed on another caller's limit.

    A caller that waited on another caller's flight (of the same run) shares that flight's
    outcome; but another caller's limit is not this one's, so it tries on its own.
    """
    try:
        return attempt()
    except RateLimited as err:
        if err.client == limit_key:
            raise
    return attempt()


class _RegistryErrors:
    """Turn a backend outage into the API's 503 (a class, not ``@contextmanager``: every lookup
    hit enters one, and a generator-based one costs several times as much)."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: object) -> None:
        if isinstance(error, RegistryUnavailable):
            raise Unavailable("The run registry is unavailable; try again shortly") from error


_registry_errors = _RegistryErrors()  # stateless: one for every use
