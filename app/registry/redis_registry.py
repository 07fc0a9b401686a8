"""The shared registry on Redis: one registry for every worker process and host.

The keys it keeps are listed in ``lua/prelude.lua``. Every change is one Lua script (in
``lua/``, loaded once), so it happens whole or not at all. Scripts touch keys they compute from
the prefix, so this backend needs a single Redis (or a primary with replicas), not Redis Cluster.

A running run belongs to the process executing it: its ``owner`` token is in the run's hash,
and only that token appends events (to a Redis stream, ids equal to positions) or ends it.
The owner extends a lease on the run while it runs; should the process die, the lease lapses
and any process fails the run (``reap``), so no run stays running forever. Readers anywhere tail
the stream: one follower per run and process fills a local log for every reader there.

A key under the prefix that is not what this module wrote there (another type, missing
fields) is treated as absent, never as a run, and logged once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import redis

from app.clock import now_ms
from app.logs import DefectLog
from app.models import EncodedEvent
from app.models import LedgerCheck
from app.models import LedgerEntry
from app.models import LedgerFigures
from app.models import ListedRun
from app.models import RegistryStats
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunPage
from app.models import RunRecord
from app.models import RunRef
from app.models import RunState
from app.models import duration_bucket
from app.models import run_created_at
from app.registry.base import FAILED_RETENTION_MS
from app.registry.base import LISTING_SCAN
from app.registry.base import SWEEP_SLICE
from app.registry.base import RegistryFull
from app.registry.base import RegistryUnavailable
from app.registry.base import Started
from app.registry.event_log import LiveLog
from app.registry.ledger import DEFAULT_LEDGER_KEYS
from app.registry.ledger import DEFAULT_LEDGER_MS
from app.registry.redis_connection import redis_client
from app.registry.redis_fields import divergence
from app.registry.redis_fields import ledger_check
from app.registry.redis_fields import ledger_entry
from app.registry.redis_fields import registry_stats
from app.registry.redis_fields import run_state
from app.registry.redis_fields import stream_ending
from app.serving.concurrency import spawn

log = logging.getLogger(__name__)
LEASE_MS = 10_000  # a dead executor's run is failed this long after its last renewal, plus a reap interval
REAP_EVERY_S = 2.0
STREAM_GRACE_MS = 60_000  # a done run's stream stays this long for readers still on it; then its record serves
FOLLOW_BLOCK_MS = 5_000
FOLLOW_BATCH = 1000  # stream entries one XREAD of a follower takes
REAP_SLICE = 10  # lapsed runs failed per reap (every REAP_EVERY_S, by every process)
EXECUTOR_LOST = "The process executing this run stopped before it ended (killed, or its host lost)"
NO_WORKER = "No worker took this run in time: none runs this engine code, or all were busy"
# A run that left the registry while it was followed: Redis lost it (restarted without its data).
VANISHED = RunError("UNAVAILABLE", "The run is no longer in the registry; look it up again")
# The run hash's fields, in the order get() reads them.
_FIELDS = ("runId", "cacheKey", "engineCodeHash", "engineName", "engineVersion", "status", "count", "hits",
           "eventsDigest", "bodyGzip", "expiresAt", "errorType", "errorMessage")


def _script(name: str) -> str:
    prelude = resources.files("app.registry").joinpath("lua", "prelude.lua").read_text()
    own = resources.files("app.registry").joinpath("lua", f"{name}.lua").read_text()
    return prelude + own


class RedisRegistry:
    """The registry contract on a Redis server shared by every process and host."""

    def __init__(
        self,
        url: str,
        ttl_ms: int,
        max_entries: int,
        timeout_ms: int = 500,
        prefix: str = "run-registry:",
        lease_ms: int = LEASE_MS,
        ledger_ms: int = DEFAULT_LEDGER_MS,
        ledger_keys: int = DEFAULT_LEDGER_KEYS,
    ) -> None:
        self.ttl_ms = ttl_ms
        self._ledger_bounds = (ledger_ms, ledger_keys)
        self._max_entries = max_entries
        self._prefix = prefix
        self._lease_ms = lease_ms
        self._client = redis_client(url, timeout_ms)
        # Followers block on XREAD for seconds: a client of their own, whose reads may take that long.
        self._follow_client = redis_client(url, timeout_ms, blocking_read_s=FOLLOW_BLOCK_MS / 1000 + timeout_ms / 1000)
        self._scripts = {name: self._client.register_script(_script(name)) for name in (
            "touch", "peek", "start", "append", "finish", "fail", "reap", "renew", "discard", "stats", "engine_run",
            "hand_over", "take_over", "check_reproduction", "ledger_figures", "list_runs")}
        self._executor = f"{socket.gethostname()}:{os.getpid()}"
        self._defects = DefectLog(log)
        self._lock = threading.Lock()
        self._owned: dict[str, str] = {}  # runId -> owner, of the runs this process executes
        self._followed: dict[str, LiveLog] = {}
        self._closed = threading.Event()
        self._background_started = False

    def touch(self, cache_key: str) -> RunRef | None:
        self._start_background()
        answer = self._call("touch", cache_key, self.ttl_ms)
        return RunRef(answer[0].decode(), answer[1].decode()) if answer else None

    def peek(self, cache_key: str) -> bool:
        return bool(self._call("peek", cache_key))

    def start(self, key: RunKey, engine_name: str, engine_version: str, owner: str) -> Started:
        self._start_background()
        answer = self._call(
            "start", key.digest, self.ttl_ms, key.run_id_prefix, now_ms(), owner, self._lease_ms, self._max_entries,
            key.scenario_id, key.engine_code_hash, engine_name, engine_version, self._executor, SWEEP_SLICE,
        )
        outcome = answer[0].decode()
        if outcome == "full":
            raise RegistryFull(f"all {self._max_entries} entries are runs still running")
        run_id = answer[1].decode()
        if outcome == "found":
            return Started(run_id, answer[2].decode(), started=False)
        with self._lock:
            self._owned[run_id] = owner
        return Started(run_id, "running", started=True,
                       identity=RunIdentity.of(key, run_id, engine_name, engine_version))

    def hand_over(self, run_id: str, owner: str, wait_ms: int) -> bool:
        """Give the execution of a run this process started to a worker (queue mode): this process
        stops keeping its lease, and the run fails unless a worker takes it within ``wait_ms``.

        :returns: ``False`` if the run is not ``owner``'s running run.
        """
        self._disown(run_id)
        return bool(self._call("hand_over", run_id, owner, wait_ms))

    def take_over(self, run_id: str, owner: str, executor: str) -> bool:
        """A worker takes a handed-over run to execute it, and keeps its lease from now on.

        :returns: ``False`` if the run is not ``owner``'s, is taken already, or waited too long:
            then nothing is to be executed.
        """
        self._start_background()
        taken = bool(self._call("take_over", run_id, owner, executor, self._lease_ms))
        if taken:
            with self._lock:
                self._owned[run_id] = owner
        return taken

    def append(self, run_id: str, owner: str, first_position: int, events: Sequence[EncodedEvent]) -> bool:
        flat: list[Any] = [part for event in events for part in event]
        return bool(self._call("append", run_id, owner, first_position, *flat))

    def finish(self, run_id: str, owner: str, record: RunRecord) -> LedgerCheck | None:
        try:
            answer = self._call(
                "finish", run_id, owner, self.ttl_ms, record.events_digest, record.body_gzip, record.event_count,
                STREAM_GRACE_MS, SWEEP_SLICE, *self._ledger_bounds,
            )
        finally:
            self._disown(run_id)
        return ledger_check(answer) if answer else None

    def check_reproduction(self, record: RunRecord, replayed_digest: bytes) -> LedgerCheck:
        identity = record.identity
        return ledger_check(self._call(
            "check_reproduction", identity.cache_key, identity.engine_code_hash, identity.run_id, record.events_digest,
            replayed_digest, *self._ledger_bounds,
        ))

    def ledger(self, cache_key: str) -> LedgerEntry | None:
        with _unavailable_on_redis_errors():
            try:
                fields: list[Any] = self._client.hmget(f"{self._prefix}ledger:{cache_key}", ("r", "d", "n", "x"))
            except redis.ResponseError:  # another type under the name: no entry of ours
                return None
        if fields[0] is None or fields[1] is None:
            return None
        return self._ledger_entry(fields, cache_key)

    def _ledger_entry(self, fields: Sequence[Any], name: str) -> LedgerEntry | None:
        """A ledger hash's r, d, n, x fields as an entry; ``None``, reported once, if they are not one."""
        try:
            return ledger_entry(fields)
        except (ValueError, IndexError, UnicodeDecodeError):
            self._defects.report(name, "redis ledger entry of %s is not one; treated as absent", name)
            return None

    def runs(self, limit: int, before: str | None) -> RunPage:
        self._start_background()
        answer = self._call("list_runs", limit, before or "", run_created_at(before) if before else 0, LISTING_SCAN)
        listed = []
        for offset in range(1, len(answer), 6):
            run_id, status, *ledger = answer[offset:offset + 6]
            run_id = run_id.decode()
            determinism = None
            if ledger[0] and ledger[1]:
                determinism = self._ledger_entry(ledger, f"the key of run {run_id}")
            listed.append(ListedRun(run_id, status.decode(), determinism))
        return RunPage(listed, answer[0].decode() if answer[0] else None)

    def ledger_figures(self, latest: int) -> LedgerFigures:
        answer = self._call("ledger_figures", latest, *self._ledger_bounds)
        divergences = []
        for listed in answer[3:]:
            try:
                divergences.append(divergence(listed))
            except (ValueError, UnicodeDecodeError):
                self._defects.report("ledger-divergences", "a divergence listed in Redis is unreadable; skipped")
        return LedgerFigures(int(answer[0]), int(answer[1]), int(answer[2]), tuple(divergences))

    def fail(self, run_id: str, owner: str, error: RunError) -> bool:
        try:
            return bool(self._call("fail", run_id, owner, error.type, error.message, FAILED_RETENTION_MS))
        finally:
            self._disown(run_id)

    def get(self, run_id: str) -> RunState | None:
        self._start_background()
        key = f"{self._prefix}run:{run_id}"
        try:
            with _unavailable_on_redis_errors():
                values: list[Any] = self._client.hmget(key, _FIELDS)
        except RegistryUnavailable as err:
            if isinstance(err.__cause__, redis.ResponseError) and str(err.__cause__).startswith("WRONGTYPE"):
                self._defects.report(key, "redis key %s is not a run record (another type); treated as absent", key)
                return None
            raise
        if all(value is None for value in values):
            return None
        try:
            state = run_state(dict(zip(_FIELDS, values, strict=True)))
        except (AttributeError, TypeError, ValueError, UnicodeDecodeError, KeyError):  # missing or unreadable
            self._defects.report(key, "redis key %s is not a whole run record; treated as absent", key)
            return None
        if state.identity.run_id != run_id:
            self._defects.report(key, "redis key %s holds the record of another run; treated as absent", key)
            return None
        return state

    def open_log(self, run_id: str) -> LiveLog | None:
        state = self.get(run_id)
        if state is None or state.status == "done":
            return None
        with self._lock:
            followed = self._followed.get(run_id)
            if followed is not None:
                return followed
            followed = self._followed[run_id] = LiveLog()
        spawn(self._follow, run_id, followed, name=f"follow-{run_id[-13:]}")
        return followed

    def discard(self, run_id: str) -> None:
        self._call("discard", run_id)

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        self._call("engine_run", f"{duration_ms:.3f}", int(failed), "failed" if failed else "succeeded",
                   duration_bucket(duration_ms / 1000), f"{duration_ms / 1000:.6f}")

    def stats(self, top_scenarios: int) -> RegistryStats:
        return registry_stats(*self._call("stats", top_scenarios))

    def reap(self) -> int:
        """Fail running runs whose executor's lease lapsed; how many. Every process does this
        every few seconds, so a dead executor's run ends within a bound."""
        return int(self._call("reap", REAP_SLICE, EXECUTOR_LOST, FAILED_RETENTION_MS, NO_WORKER))

    def ping(self) -> None:
        with _unavailable_on_redis_errors():
            self._client.ping()

    def close(self) -> None:
        self._closed.set()
        self._client.close()
        self._follow_client.close()

    # Background work: lease keeping and reaping, and one follower per run being read.

    def _start_background(self) -> None:
        if self._background_started:
            return
        with self._lock:
            if self._background_started:
                return
            self._background_started = True
        spawn(self._keep_leases, name="leases")
        spawn(self._reap_periodically, name="reaper")

    def _keep_leases(self) -> None:
        while not self._closed.wait(self._lease_ms / 3000):  # a third of a lease: two beats may fail
            with self._lock:
                owned = list(self._owned.items())
            if not owned:
                continue
            try:
                lost = self._call("renew", self._lease_ms, *(part for pair in owned for part in pair))
            except RegistryUnavailable:
                continue  # the next beat tries again; if Redis stays away the leases lapse, as they should
            for run_id in lost:
                log.error("run %s is no longer this process's: its lease lapsed", run_id.decode())
                self._disown(run_id.decode())

    def _reap_periodically(self) -> None:
        while not self._closed.wait(REAP_EVERY_S):
            try:
                if self.reap():
                    log.warning("failed runs whose executor stopped (their lease lapsed)")
            except RegistryUnavailable:
                continue

    def _follow(self, run_id: str, followed: LiveLog) -> None:
        """Fill ``followed`` from the run's stream until its end entry."""
        stream = f"{self._prefix}stream:{run_id}"
        last = "0-0"
        try:
            while not self._closed.is_set():
                try:
                    answer: Any = self._follow_client.xread({stream: last}, count=FOLLOW_BATCH, block=FOLLOW_BLOCK_MS)
                # ValueError, AttributeError and TypeError: close() tore the connection down under
                # this read (redis-py drops its buffer, or its socket: hiredis's liveness check then
                # polls None); the others: Redis went away, and the read is retried.
                except (redis.RedisError, OSError, ValueError, AttributeError, TypeError):
                    if self._closed.wait(0.5):
                        return
                    continue
                if not answer:
                    if not self._follow_quiet_run(run_id, followed):
                        return
                    continue
                events: list[EncodedEvent] = []
                for entry_id, fields in answer[0][1]:
                    last = entry_id.decode()
                    if b"end" in fields:
                        followed.extend(events)
                        followed.end(stream_ending(fields))
                        return
                    events.append((fields[b"t"].decode(), fields[b"d"]))
                followed.extend(events)
        finally:
            with self._lock:
                if self._followed.get(run_id) is followed:
                    del self._followed[run_id]

    def _follow_quiet_run(self, run_id: str, followed: LiveLog) -> bool:
        """A quiet stream: is its run still running? Reaps it if its executor is gone.

        :returns: whether to keep following.
        """
        try:
            self.reap()
            state = self.get(run_id)
        except RegistryUnavailable:
            return True
        if state is not None and state.status == "running":
            return True
        # Ended without our seeing its end entry (the stream expired, or Redis lost it): say how.
        if state is None:
            followed.end(VANISHED)
        else:
            followed.end(state.error if state.error is not None else "done")
        return False

    def holds(self, run_id: str, owner: str) -> bool:
        with self._lock:
            return self._owned.get(run_id) == owner

    def _disown(self, run_id: str) -> None:
        with self._lock:
            self._owned.pop(run_id, None)

    def _call(self, script: str, *args: Any) -> Any:
        with _unavailable_on_redis_errors():
            return self._scripts[script](args=[self._prefix, *args])


@contextmanager
def _unavailable_on_redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as err:
        raise RegistryUnavailable(f"redis: {err.__class__.__name__}") from err
