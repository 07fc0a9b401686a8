"""RunService: get-or-create runs, execute the engine once per key, serve the records."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol
from typing import TypeVar

from app.code_hash import engine_code_hash
from app.config import Settings
from app.engine.base import Engine
from app.engine.base import Event
from app.errors import BadInput
from app.errors import EngineFailed
from app.errors import EngineMismatch
from app.errors import RateLimited
from app.errors import RunNotFound
from app.errors import Unavailable
from app.evidence.csv_export import events_csv
from app.evidence.diff import TranscriptDiff
from app.evidence.diff import diff_transcripts
from app.evidence.diff import first_difference
from app.evidence.snapshot import snapshot_zip
from app.evidence.sse import sse_messages
from app.limits import NewRunLimit
from app.logs import DefectLog
from app.models import LiveRun
from app.models import RegistryStats
from app.models import RunKey
from app.models import RunRecord
from app.models import Source
from app.models import canonical_json
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.registry.single_flight import SingleFlight
from app.text import printable

log = logging.getLogger(__name__)
# An event type becomes an SSE "event:" line later: no spaces, no newlines.
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# The largest transcript recorded, and so the most that reading one back may decompress to.
MAX_TRANSCRIPT_BYTES = 32 * 1024 * 1024
# /registry/stats lists this many scenarios by entries; the rest are counted, not named, so the
# answer stays small however many scenarios a registry holds.
STATS_TOP_SCENARIOS = 20
T = TypeVar("T")


class RunService:
    """Get-or-create runs and serve their transcripts. Knows nothing about HTTP."""

    def __init__(
        self, registry: Registry, engine: Engine, settings: Settings, new_run_limit: NewRunLimit | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self._registry = registry
        self._engine = engine
        self._observer = observer or _Unobserved()
        self._settings = settings
        self._backend = "redis" if settings.shared_registry else "memory"
        self.engine_code_hash = engine_code_hash(engine, settings)
        self._bodies = _DecompressedBodies(capacity=128)
        self._defects = DefectLog(log)
        self._new_runs = new_run_limit or NewRunLimit(settings.new_runs_per_minute)
        self._verifications: SingleFlight[Verification] = SingleFlight()
        self._engine_threads = ThreadPoolExecutor(max_workers=settings.engine_threads, thread_name_prefix="engine")
        # Runs beyond the threads wait in the pool's queue, up to engine_queue; beyond that a
        # request that would start one is refused at once (503), not left to time out.
        self._engine_slots = _Slots(settings.engine_threads + settings.engine_queue)
        # A paced replay holds a server thread for its whole length: bound how many may.
        self._paced_replays = threading.BoundedSemaphore(settings.paced_replays)

    def lookup(self, scenario_id: str, seed: int, client: str) -> tuple[str, Source]:
        """Return the runId of the key's live run, executing the engine once if there is none.

        ``client`` is who asks: a lookup that would start a run counts against its new-run limit.

        :raises EngineFailed: the engine raised or returned malformed events; nothing is stored.
        :raises RateLimited: the run would start, and ``client`` has started its share this minute.
        :raises Unavailable: the run would start, and the engine has no room for it (or the backend is down).
        """
        key = RunKey(scenario_id, seed, self.engine_code_hash)
        created = False
        with _registry_errors():
            run_id = self._registry.touch(key.digest)
            if run_id is None:
                run_id, created = _as_own_client(client, lambda: self._registry.create_once(
                    key, lambda run_id: self._execute(key, run_id, client)
                ))
        source: Source = "new" if created else "cache"
        self._observer.lookup_answered(source)
        return run_id, source

    def run(self, run_id: str) -> LiveRun:
        """The live run, its transcript checked against its digest the first time this process reads it.

        :raises RunNotFound: the run never existed, expired or was evicted, or its stored
            transcript is not what its digest says (so it is never served as one).
        """
        with _registry_errors():
            live = self._registry.get(run_id)
        if live is None:
            raise RunNotFound(f"Run {printable(run_id)} not found")
        try:
            self._bodies.get(live.record)
        except CorruptTranscript as err:
            self._defects.report(live.record.run_id, "run %s is not served, and is removed: %s", printable(run_id), err)
            with _registry_errors():
                self._registry.discard(live.record.run_id)
            raise RunNotFound(f"Run {printable(run_id)} not found") from err
        return live

    def events_body(self, run_id: str, gzip_ok: bool) -> tuple[bytes, bool]:
        """The /events JSON body: gzip-compressed as stored when the client takes that, else plain.

        :returns: the body, and whether it is gzip-compressed.
        """
        record = self.run(run_id).record
        return (record.body_gzip, True) if gzip_ok else (self._bodies.get(record), False)

    def stats_report(self) -> StatsReport:
        """What the registry counts (with a shared backend, for the whole fleet), with its settings;
        entries by scenario for the ``STATS_TOP_SCENARIOS`` scenarios with the most."""
        with _registry_errors():
            stats = self._registry.stats(top_scenarios=STATS_TOP_SCENARIOS)
        return StatsReport(stats, self._backend, self._settings.ttl_minutes)

    def registry_counts(self) -> RegistryStats:
        """What the registry counts, without any scenario: what a metrics scrape needs, cheaply."""
        with _registry_errors():
            return self._registry.stats(top_scenarios=0)

    def readiness(self) -> Readiness:
        """:raises Unavailable: the registry backend does not answer."""
        with _registry_errors():
            self._registry.ping()
        return Readiness(
            backend=self._backend,
            engine_name=self._engine.name,
            engine_version=self._engine.version,
            engine_code_hash=self.engine_code_hash,
        )

    def replay(self, run_id: str, last_event_id: int | None, pace_ms: int) -> Iterable[bytes]:
        """The transcript as Server-Sent Events, resuming after ``last_event_id``.

        :raises BadInput: ``last_event_id`` is not a position in the run.
        :raises Unavailable: too many paced replays are already running.
        """
        record = self.run(run_id).record
        if last_event_id is not None and not 1 <= last_event_id <= record.event_count:
            raise BadInput(
                f"Last-Event-ID {last_event_id} is not a position in this run (1 to {record.event_count})"
            )
        messages = sse_messages(self._events(record), after=last_event_id or 0, pace_ms=pace_ms)
        if not pace_ms:
            return messages
        if not self._paced_replays.acquire(blocking=False):
            raise Unavailable("Too many paced replays are running; retry shortly, or replay without pace")
        return _ReleasingStream(messages, self._paced_replays.release)

    def export_csv(self, run_id: str) -> bytes:
        """The transcript as spreadsheet-safe CSV."""
        return events_csv(self._events(self.run(run_id).record))

    def snapshot(self, run_id: str) -> bytes:
        """The run's ZIP evidence pack; the same bytes every time for the same run."""
        record = self.run(run_id).record
        return snapshot_zip(record, self._events_json(record), events_csv(self._events(record)))

    def compare(self, left: tuple[str, int], right: tuple[str, int], client: str) -> Comparison:
        """Look both runs up (get or create, renewing them) and diff their transcripts.

        Each side that starts a run counts against ``client``'s new-run limit.
        """
        left_run, left_source = self._lookup_run(*left, client)
        right_run, right_source = self._lookup_run(*right, client)
        return Comparison(
            left_run, left_source, right_run, right_source,
            diff_transcripts(self._events(left_run.record), self._events(right_run.record)),
        )

    def verify(self, run_id: str, client: str) -> Verification:
        """Execute the engine again and check the new transcript against the recorded bytes.

        Verifications of one run asked for at once share one execution (and its answer); the
        one that executes counts against ``client``'s new-run limit.

        :raises EngineMismatch: the run was recorded by other engine code than this one.
        :raises EngineFailed: the engine raised or returned malformed events.
        :raises RateLimited: ``client`` has started its share of executions this minute.
        :raises Unavailable: the engine has no room for another execution.
        """
        record = self.run(run_id).record
        if record.engine_code_hash != self.engine_code_hash:
            raise EngineMismatch(
                f"Run {run_id} was recorded under engineCodeHash {record.engine_code_hash};"
                f" this service runs {self.engine_code_hash}"
            )
        verification, _ = _as_own_client(
            client, lambda: self._verifications.run(record.run_id, lambda: self._reproduce(record, client))
        )
        return verification

    def verification_callers(self, run_id: str) -> int:
        """How many requests share the run's verification now (0 when none is running)."""
        return self._verifications.callers(run_id)

    def engine_slots_in_use(self) -> int:
        """Engine executions running or queued in this process now."""
        return self._engine_slots.in_use

    def _reproduce(self, record: RunRecord, client: str) -> Verification:
        self._admit(client)
        started = time.perf_counter()
        events, events_json = self._timed_engine_run(RunKey(record.scenario_id, record.seed, record.engine_code_hash))
        duration_ms = (time.perf_counter() - started) * 1000
        recorded_json = self._events_json(record)
        reproducible = events_json == recorded_json
        return Verification(
            run_id=record.run_id,
            reproducible=reproducible,
            recorded_sha256=record.events_sha256,
            replayed_sha256=hashlib.sha256(events_json).hexdigest(),
            first_difference=None if reproducible else first_difference(self._events(record), events),
            recorded_count=record.event_count,
            replayed_count=len(events),
            duration_ms=round(duration_ms, 3),
        )

    def _admit(self, client: str) -> None:
        """Count one engine execution against ``client``'s limit, before anything starts."""
        with _registry_errors():
            self._new_runs.admit(client)

    def _events_json(self, record: RunRecord) -> bytes:
        return record.events_json(self._bodies.get(record))

    def _events(self, record: RunRecord) -> list[Event]:
        events: list[Event] = json.loads(self._events_json(record))
        return events

    def _run_engine(self, key: RunKey) -> tuple[list[Event], bytes]:
        """The engine's events for the key, checked, and their canonical JSON.

        The engine runs on a thread of its own, and is waited for at most the engine timeout:
        a hung engine fails its callers then, instead of holding them (and their key) forever.
        Python cannot stop the thread, so a bounded pool holds such runs; while every engine
        thread is hung, new runs wait in its queue and fail at their own timeout.
        """
        which = f"scenario {key.scenario_id} seed {key.seed}"
        context = contextvars.copy_context()  # the engine's log lines keep the request's id
        if not self._engine_slots.take():
            raise Unavailable(
                f"The engine is running and queueing all it can ({self._settings.engine_threads} running,"
                f" {self._settings.engine_queue} waiting); retry shortly"
            )
        running = self._engine_threads.submit(context.run, self._engine_events, key)
        try:
            events = running.result(timeout=self._settings.engine_timeout_s)
        except FutureTimeout as err:
            running.cancel()  # if it is still queued; a running engine cannot be stopped
            log.error("engine %s did not finish %s within %g s", self._engine.name, which,
                      self._settings.engine_timeout_s)
            raise EngineFailed(
                f"The engine did not finish {which} within {self._settings.engine_timeout_s:g} s"
            ) from err
        except Exception as err:  # a plugin's failure of any kind is reported, never cached
            log.exception("engine %s failed for %s", self._engine.name, which)
            raise EngineFailed(f"The engine failed to run {which}") from err
        events_json = _validated_events_json(events)
        if events_json is None:
            log.error("engine %s returned malformed events for %s", self._engine.name, which)
            raise EngineFailed(f"The engine returned malformed events for {which}")
        if len(events_json) > MAX_TRANSCRIPT_BYTES:
            log.error("engine %s returned %d bytes of events for %s", self._engine.name, len(events_json), which)
            raise EngineFailed(f"The engine returned more than {MAX_TRANSCRIPT_BYTES} bytes of events for {which}")
        return events, events_json

    def _engine_events(self, key: RunKey) -> list[Event]:
        try:
            return list(self._engine.run(key.scenario_id, key.seed))
        finally:  # a run abandoned at the timeout keeps its slot until its thread is free again
            self._engine_slots.give_back()

    def _engine_ran(self, seconds: float, failed: bool) -> None:
        self._observer.engine_ran(seconds, failed)
        # Statistics are worth less than the run: a backend outage here is the commit's to report.
        try:
            self._registry.record_engine_run(seconds * 1000, failed)
        except RegistryUnavailable:
            log.warning("engine run not counted: the registry is unavailable")

    def _lookup_run(self, scenario_id: str, seed: int, client: str) -> tuple[LiveRun, Source]:
        """A lookup that also reads the run; retried if the run went in between (a full registry)."""
        for _ in range(3):
            run_id, source = self.lookup(scenario_id, seed, client)
            with _registry_errors():
                live = self._registry.get(run_id)
            if live is not None:
                return live, source
        raise Unavailable("The registry is evicting runs faster than they can be compared; try again")

    def _timed_engine_run(self, key: RunKey) -> tuple[list[Event], bytes]:
        """``_run_engine``, counted and timed (in the metrics and the registry's statistics)."""
        started = time.perf_counter()
        try:
            events, events_json = self._run_engine(key)
        except EngineFailed:
            self._engine_ran(time.perf_counter() - started, failed=True)
            raise
        seconds = time.perf_counter() - started
        self._engine_ran(seconds, failed=False)
        log.info("engine ran scenario %s seed %s: %d events in %.1f ms", key.scenario_id, key.seed, len(events),
                 seconds * 1000)
        return events, events_json

    def _execute(self, key: RunKey, run_id: str, client: str) -> RunRecord:
        """A new run of ``key`` under ``run_id``: admitted for ``client``, executed, recorded."""
        self._admit(client)
        events, events_json = self._timed_engine_run(key)
        return RunRecord.create(
            key=key,
            run_id=run_id,
            engine_name=self._engine.name,
            engine_version=self._engine.version,
            events_json=events_json,
            event_count=len(events),
        )


class RunObserver(Protocol):
    """What the service reports as it works (the Prometheus metrics implement it)."""

    def lookup_answered(self, source: Source) -> None: ...

    def engine_ran(self, seconds: float, failed: bool) -> None: ...


class _Unobserved:
    def lookup_answered(self, source: Source) -> None:
        pass

    def engine_ran(self, seconds: float, failed: bool) -> None:
        pass


@dataclass(frozen=True)
class StatsReport:
    stats: RegistryStats
    backend: str
    ttl_minutes: float


@dataclass(frozen=True)
class Readiness:
    backend: str
    engine_name: str
    engine_version: str
    engine_code_hash: str


@dataclass(frozen=True)
class Comparison:
    left: LiveRun
    left_source: Source
    right: LiveRun
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


class _ReleasingStream:
    """A response body that gives its replay slot back once: when it runs out, or when the
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
            self._release()


class _Slots:
    """A count of things in use, up to a capacity; taking one never waits."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self.in_use = 0

    def take(self) -> bool:
        with self._lock:
            if self.in_use >= self._capacity:
                return False
            self.in_use += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.in_use -= 1


class CorruptTranscript(Exception):
    """A stored transcript is not what its record says: it does not decompress within bounds,
    or its events are not the bytes its digest names."""


class _DecompressedBodies:
    """The plain /events bodies of the most recently read runs, so a hot run is not
    decompressed on every request; bounded, so memory stays that of the compressed store.

    A body is checked against its record's digest when it is decompressed, so a record that
    a shared backend holds damaged (or that someone wrote there) is never served.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._bodies: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()

    def get(self, record: RunRecord) -> bytes:
        """:raises CorruptTranscript: the stored transcript is not what the record says."""
        key = (record.run_id, record.events_digest)
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
                return body
        body = _checked_body(record)
        with self._lock:
            self._bodies[key] = body
            if len(self._bodies) > self._capacity:
                self._bodies.popitem(last=False)
        return body


def _checked_body(record: RunRecord) -> bytes:
    """Decompress, never past the largest body a transcript may have, and check the digest."""
    limit = MAX_TRANSCRIPT_BYTES + 4096  # the events, and the runId and count around them
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        body = inflater.decompress(record.body_gzip, limit)
    except zlib.error as err:
        raise CorruptTranscript(f"its transcript does not decompress ({err})") from err
    if not inflater.eof or inflater.unconsumed_tail:
        raise CorruptTranscript(f"its transcript is incomplete or decompresses past {limit} bytes")
    if hashlib.sha256(record.events_json(body)).digest() != record.events_digest:
        raise CorruptTranscript("its events do not match its eventsSha256")
    return body


def _as_own_client(client: str, attempt: Callable[[], T]) -> T:
    """Run ``attempt``, and once more if it failed on another client's limit.

    A caller that waited on another caller's flight (of the same key or run) shares that
    flight's outcome; but another client's limit is not this one's, so it tries on its own.
    """
    try:
        return attempt()
    except RateLimited as err:
        if err.client == client:
            raise
    return attempt()


@contextmanager
def _registry_errors() -> Iterator[None]:
    """Turn a backend outage into the API's 503."""
    try:
        yield
    except RegistryUnavailable as err:
        raise Unavailable("The run registry is unavailable; try again shortly") from err


def _validated_events_json(events: Sequence[object]) -> bytes | None:
    """Canonical JSON of well-formed events: each exactly {"type": name, "data": object}."""
    for event in events:
        if not (
            isinstance(event, dict)
            and event.keys() == {"type", "data"}
            and isinstance(event["type"], str)
            and _EVENT_TYPE.fullmatch(event["type"])
            and isinstance(event["data"], dict)
        ):
            return None
    try:
        return canonical_json(events)
    except (TypeError, ValueError):
        return None

