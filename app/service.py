"""RunService: get-or-create runs, execute the engine once per key, serve the records."""

from __future__ import annotations

import contextvars
import gzip
import json
import logging
import re
import threading
import time
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

from app.clock import now_ms
from app.code_hash import engine_code_hash
from app.config import Settings
from app.engine.base import Engine
from app.engine.base import Event
from app.errors import BadInput
from app.errors import EngineFailed
from app.errors import EngineMismatch
from app.errors import RunNotFound
from app.errors import Unavailable
from app.evidence.csv_export import events_csv
from app.evidence.diff import TranscriptDiff
from app.evidence.diff import diff_transcripts
from app.evidence.diff import first_difference
from app.evidence.snapshot import snapshot_zip
from app.evidence.sse import sse_messages
from app.models import LiveRun
from app.models import RegistryStats
from app.models import RunKey
from app.models import RunRecord
from app.models import Source
from app.models import canonical_json
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.text import printable

log = logging.getLogger(__name__)
# An event type becomes an SSE "event:" line later: no spaces, no newlines.
ENGINE_THREADS = 8  # engine runs at once in one process (more than gunicorn's request threads)
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class RunService:
    """Get-or-create runs and serve their transcripts. Knows nothing about HTTP."""

    def __init__(
        self, registry: Registry, engine: Engine, settings: Settings, observer: RunObserver | None = None
    ) -> None:
        self._registry = registry
        self._engine = engine
        self._observer = observer or _Unobserved()
        self._settings = settings
        self._backend = "redis" if settings.shared_registry else "memory"
        self.engine_code_hash = engine_code_hash(engine, settings)
        self._run_id_clock = _UniqueMillis()
        self._bodies = _DecompressedBodies(capacity=128)
        self._engine_threads = ThreadPoolExecutor(max_workers=ENGINE_THREADS, thread_name_prefix="engine")
        # A paced replay holds a server thread for its whole length: bound how many may.
        self._paced_replays = threading.BoundedSemaphore(settings.paced_replays)

    def lookup(self, scenario_id: str, seed: int) -> tuple[str, Source]:
        """Return the runId of the key's live run, executing the engine once if there is none.

        :raises EngineFailed: the engine raised or returned malformed events; nothing is stored.
        """
        key = RunKey(scenario_id, seed, self.engine_code_hash)
        created = False
        with _registry_errors():
            run_id = self._registry.touch(key.digest)
            if run_id is None:
                run_id, created = self._registry.create_once(key.digest, lambda: self._execute(key))
        source: Source = "new" if created else "cache"
        self._observer.lookup_answered(source)
        return run_id, source

    def run(self, run_id: str) -> LiveRun:
        """:raises RunNotFound: the run never existed, expired or was evicted."""
        with _registry_errors():
            live = self._registry.get(run_id)
        if live is None:
            raise RunNotFound(f"Run {printable(run_id)} not found")
        return live

    def events_body(self, run_id: str, gzip_ok: bool) -> tuple[bytes, bool]:
        """The /events JSON body: gzip-compressed as stored when the client takes that, else plain.

        :returns: the body, and whether it is gzip-compressed.
        """
        record = self.run(run_id).record
        return (record.body_gzip, True) if gzip_ok else (self._bodies.get(record), False)

    def stats_report(self) -> StatsReport:
        """What the registry counts (with a shared backend, for the whole fleet), with its settings."""
        with _registry_errors():
            stats = self._registry.stats()
        return StatsReport(stats, self._backend, self._settings.ttl_minutes)

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

    def compare(self, left: tuple[str, int], right: tuple[str, int]) -> Comparison:
        """Look both runs up (get or create, renewing them) and diff their transcripts."""
        left_run, left_source = self._lookup_run(*left)
        right_run, right_source = self._lookup_run(*right)
        return Comparison(
            left_run, left_source, right_run, right_source,
            diff_transcripts(self._events(left_run.record), self._events(right_run.record)),
        )

    def verify(self, run_id: str) -> Verification:
        """Execute the engine again and check the new transcript against the recorded bytes.

        :raises EngineMismatch: the run was recorded by other engine code than this one.
        :raises EngineFailed: the engine raised or returned malformed events.
        """
        record = self.run(run_id).record
        if record.engine_code_hash != self.engine_code_hash:
            raise EngineMismatch(
                f"Run {run_id} was recorded under engineCodeHash {record.engine_code_hash};"
                f" this service runs {self.engine_code_hash}"
            )
        started = time.perf_counter()
        replayed = self._execute(RunKey(record.scenario_id, record.seed, record.engine_code_hash))
        duration_ms = (time.perf_counter() - started) * 1000
        reproducible = self._events_json(replayed) == self._events_json(record)
        return Verification(
            run_id=record.run_id,
            reproducible=reproducible,
            recorded_sha256=record.events_sha256,
            replayed_sha256=replayed.events_sha256,
            first_difference=None if reproducible else first_difference(self._events(record), self._events(replayed)),
            recorded_count=record.event_count,
            replayed_count=replayed.event_count,
            duration_ms=round(duration_ms, 3),
        )

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
        return events, events_json

    def _engine_events(self, key: RunKey) -> list[Event]:
        return list(self._engine.run(key.scenario_id, key.seed))

    def _engine_ran(self, seconds: float, failed: bool) -> None:
        self._observer.engine_ran(seconds, failed)
        # Statistics are worth less than the run: a backend outage here is the commit's to report.
        try:
            self._registry.record_engine_run(seconds * 1000, failed)
        except RegistryUnavailable:
            log.warning("engine run not counted: the registry is unavailable")

    def _lookup_run(self, scenario_id: str, seed: int) -> tuple[LiveRun, Source]:
        """A lookup that also reads the run; retried if the run went in between (a full registry)."""
        for _ in range(3):
            run_id, source = self.lookup(scenario_id, seed)
            with _registry_errors():
                live = self._registry.get(run_id)
            if live is not None:
                return live, source
        raise Unavailable("The registry is evicting runs faster than they can be compared; try again")

    def _execute(self, key: RunKey) -> RunRecord:
        started = time.perf_counter()
        try:
            events, events_json = self._run_engine(key)
        except EngineFailed:
            self._engine_ran(time.perf_counter() - started, failed=True)
            raise
        seconds = time.perf_counter() - started
        self._engine_ran(seconds, failed=False)
        created_at = self._run_id_clock.next()
        log.info("engine ran scenario %s seed %s: %d events in %.1f ms", key.scenario_id, key.seed, len(events),
                 seconds * 1000)
        return RunRecord.create(
            key=key,
            engine_name=self._engine.name,
            engine_version=self._engine.version,
            created_at=created_at,
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


class _DecompressedBodies:
    """The plain /events bodies of the most recently read runs, so a hot run is not
    decompressed on every request; bounded, so memory stays that of the compressed store."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._bodies: OrderedDict[tuple[str, bytes], bytes] = OrderedDict()

    def get(self, record: RunRecord) -> bytes:
        key = (record.run_id, record.events_digest)
        with self._lock:
            body = self._bodies.get(key)
            if body is not None:
                self._bodies.move_to_end(key)
                return body
        body = gzip.decompress(record.body_gzip)
        with self._lock:
            self._bodies[key] = body
            if len(self._bodies) > self._capacity:
                self._bodies.popitem(last=False)
        return body


class _UniqueMillis:
    """Epoch milliseconds that never repeat in this process, so two live runs never share a runId."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(now_ms(), self._last + 1)
            return self._last


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

