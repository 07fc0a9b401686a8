"""The Procfile's ``worker``: executes runs from the job queue (RQ), for this deploy's engine code.

    python -m app.worker

It reads the same settings as the web process (``RUN_REGISTRY_URL``, or ``REDIS_URL``; the
engine), computes its engineCodeHash, and takes jobs only from that hash's queue, so during a
rolling deploy old workers never record runs for new code, nor the reverse. Each job runs in
a work-horse process RQ forks for it, with a hard timeout; the horse dies with its worker.

Exactly once is the registry's, not the queue's (no queue deduplicates by job id): a job
executes only a run that is still running, holds the job's owner token and has no executor yet,
and writes its events and its end only with that token, so a job delivered twice, or a zombie
horse, can neither execute a run twice nor write over it.

Anyone who can write to the Redis can put a job on the queue, and RQ runs whatever function a
job names (``os.system`` too) and, with its default pickle serializer, whatever a job's bytes
unpickle to. So jobs are JSON (RQ's ``JSONSerializer``: reading one runs nothing), and this
worker executes a job only when it is one of this module's two, with arguments of their shape
and nothing else a job can ask of a worker (callbacks, webhooks, dependencies); anything else
is logged and deleted unread. RQ also acts on jobs outside execution, in its registry
maintenance (an abandoned job's failure callback, its webhooks): this worker's jobs never name
a callback or a webhook whatever their hash says, nor a function but the two, and its
maintenance refuses what was left where RQ looks before RQ looks (``own_jobs_worker``). The
Redis still needs a password (docs/deploying.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING
from typing import Any

from app.config import ConfigError
from app.config import Settings
from app.config import load_settings
from app.config import registry_url_for_display
from app.engine import load_engine
from app.engine.base import Engine
from app.engine.base import EngineUnavailable
from app.engine.identity import CodeHash
from app.execution import queue_key
from app.execution import queue_name
from app.logs import configure_json_logging
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.registry import make_registry
from app.registry.redis_registry import RedisRegistry
from app.runner import EngineFault
from app.runner import Runner
from app.schemas import MAX_SAFE_INTEGER
from app.schemas import RUN_ID_PATTERN
from app.schemas import SCENARIO_ID_PATTERN
from app.text import printable

if TYPE_CHECKING:
    from rq.worker import HerokuWorker

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
# How often an idle worker tells Redis it is alive (RQ's default is every 405 s): after a Redis
# restart it registers again within this, so /readyz counts it (docs/operations.md).
HEARTBEAT_S = 10
REDIS_START_WAIT_S = 10.0
_RUN_ID = RUN_ID_PATTERN.match  # the pattern ends with \Z: a whole match
_OWNER = re.compile(r"[0-9a-f]{32}").fullmatch
_NAME = re.compile(r"[\x21-\x7e]{1,128}").fullmatch  # an engineCodeHash, an engine's name or version
# The fields of a job hash as this service's enqueue writes them (rq 3); a job with any other
# asks something of the worker that ours never do.
_JOB_FIELDS = frozenset({
    "created_at", "data", "description", "ended_at", "enqueued_at", "failure_callback_name", "failure_ttl",
    "group_id", "last_heartbeat", "origin", "result_ttl", "started_at", "status", "stopped_callback_name",
    "success_callback_name", "timeout", "ttl", "worker_name",
})
_CALLBACK_FIELDS = ("success_callback_name", "failure_callback_name", "stopped_callback_name")


@dataclass(frozen=True)
class _Horse:
    """What a work-horse needs to execute runs: made once per process, on its first job."""

    settings: Settings
    engine: Engine
    code_hash: CodeHash
    registry: RedisRegistry
    runner: Runner

    def engine_code_hash(self, expected: str) -> str | None:
        """This worker's engineCodeHash now (``None``: a remote engine that does not answer). A
        remote engine is asked again when it differs from ``expected``: the web process that
        started the run may have seen a redeploy first."""
        try:
            current = self.code_hash.of(self.engine.identity())
            if current != expected and self.engine.remote:
                current = self.code_hash.of(self.engine.ready(fresh=True))
        except EngineUnavailable as err:
            log.error("the engine cannot be reached: %s", err)
            return None
        return current


@cache
def _horse() -> _Horse:
    settings = load_settings(os.environ)
    engine = load_engine(settings)
    registry = make_registry(settings)
    assert isinstance(registry, RedisRegistry)  # load_settings refuses workers without Redis
    runner = Runner(registry, engine, settings)
    return _Horse(settings, engine, CodeHash(settings), registry, runner)


def execute_run(run_id: str, owner: str, engine_code_hash: str, engine_name: str, engine_version: str) -> str:
    """The job: execute and record one run, if it is still this job's to execute.

    :returns: what happened (kept as the job's result for a while, for operators).
    """
    _die_with_the_worker()
    horse = _horse()
    current = horse.engine_code_hash(engine_code_hash)
    if current != engine_code_hash and not horse.engine.remote:  # its queue is its hash's: a misrouted job
        log.error("run %s is for engineCodeHash %s; this worker runs %s", run_id, engine_code_hash, current)
        return "refused: another engineCodeHash"
    if not horse.registry.take_over(run_id, owner, executor=f"{socket.gethostname()}:{os.getpid()}"):
        log.warning("run %s is not this job's to execute (already taken, or failed waiting)", run_id)
        return "skipped: not this job's run"
    if current != engine_code_hash:  # a remote engine redeployed (or gone) since the run started
        reason = "cannot be reached" if current is None else f"is now engineCodeHash {current}"
        horse.registry.fail(run_id, owner, RunError("ENGINE_ERROR", f"The engine {horse.engine.spec} {reason};"
                                                    f" run {run_id} was started for {engine_code_hash}"))
        return "failed: the engine changed"
    key = RunKey(*_scenario_and_seed(run_id), engine_code_hash)
    identity = RunIdentity.of(key, run_id, engine_name, engine_version)
    horse.runner.slots.take()
    horse.runner.record_to_end(identity, owner)
    return "executed"


def reproduce_run(scenario_id: str, seed: int, engine_code_hash: str,
                  run_id: str) -> tuple[list[tuple[str, str]], float]:
    """The job of a verification: the engine's events for the key again (type and data JSON,
    as JSON can carry them), and its time."""
    _die_with_the_worker()
    horse = _horse()
    if horse.engine_code_hash(engine_code_hash) != engine_code_hash:
        raise EngineFault(f"The engine is not engineCodeHash {engine_code_hash} any more: run {run_id} cannot be"
                          " verified against it")
    if not horse.runner.slots.take():
        raise RuntimeError("no room for a verification")
    reproduction = horse.runner.reproduce(RunKey(scenario_id, seed, engine_code_hash), run_id)
    return [(event_type, data.decode()) for event_type, data in reproduction.events], reproduction.seconds


def _execute_run_arguments(args: list[Any]) -> bool:
    return (len(args) == 5 and all(isinstance(arg, str) for arg in args) and bool(_RUN_ID(args[0]))
            and bool(_OWNER(args[1])) and all(_NAME(arg) for arg in args[2:]))


def _reproduce_run_arguments(args: list[Any]) -> bool:
    return (len(args) == 4 and isinstance(args[0], str) and bool(SCENARIO_ID_PATTERN.match(args[0]))
            and type(args[1]) is int and -MAX_SAFE_INTEGER <= args[1] <= MAX_SAFE_INTEGER
            and isinstance(args[2], str) and bool(_NAME(args[2])) and isinstance(args[3], str)
            and bool(_RUN_ID(args[3])))


# By their import path: the worker runs as __main__ (python -m app.worker), the web enqueues by path.
_JOBS = {"app.worker.execute_run": _execute_run_arguments, "app.worker.reproduce_run": _reproduce_run_arguments}


def job_refusal(fields: dict[Any, Any], job: Any) -> str | None:
    """Why a job from the queue is not this service's to execute, or ``None`` if it is.

    ``fields`` is the job's hash as Redis holds it; ``job`` the job RQ read from it (with the JSON
    serializer, which runs nothing).
    """
    names = {name.decode(errors="replace") for name in fields}
    if not names <= _JOB_FIELDS:
        return f"it asks for more than a run (fields {', '.join(sorted(names - _JOB_FIELDS))})"
    if any(fields.get(name.encode()) for name in _CALLBACK_FIELDS):
        return "it names callbacks"
    try:
        function, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception:
        return "its data is not a JSON job"
    check = _JOBS.get(function) if isinstance(function, str) else None
    if check is None:
        return f"it calls {printable(str(function), limit=80)!r}, not one of this service's jobs"
    if instance is not None or kwargs or not isinstance(args, list | tuple) or not check(list(args)):
        return f"its arguments are not those of {function}"
    return None


def _scenario_and_seed(run_id: str) -> tuple[str, int]:
    scenario_id, seed, _ = run_id[4:].rsplit("_", 2)
    return scenario_id, int(seed)


def _die_with_the_worker() -> None:
    """A SIGKILLed worker takes its horse with it (Linux): the run then fails within its lease,
    rather than an orphan finishing it unwatched."""
    # Not Linux: the horse outlives a killed worker and ends its run.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> None:
    """Run an RQ worker on this deploy's queue until SIGTERM (a warm shutdown, as Heroku sends it)."""
    from redis import Redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    configure_json_logging()
    try:
        if not load_settings(os.environ).shared_registry:
            raise ConfigError("RUN_REGISTRY_URL (or REDIS_URL) must name a Redis: workers share the web's registry")
        # Built once here, inherited by every work-horse RQ forks: a job starts at once. Nothing of
        # it runs before a fork (its threads start at first use, in the horse).
        horse = _horse()
    except ConfigError as err:
        sys.exit(f"run-registry worker: refusing to start: {err}")
    connection = Redis.from_url(horse.settings.registry_url)  # RQ blocks on its queue: no short read timeout
    _wait_for_redis(connection, horse.settings)
    key = queue_key(horse.engine, horse.code_hash)
    worker_class = own_jobs_worker()
    queue = worker_class.queue_class(queue_name(horse.settings, key), connection=connection, serializer=JSONSerializer)
    connection.sadd(Queue.redis_queues_keys, queue.key)  # so `rq info` lists the queue before its first job
    log.info("run-registry worker: executing runs of engine %s (%s) from queue %s", horse.engine.spec,
             _described(horse), queue.name)
    worker = worker_class([queue], connection=connection, serializer=JSONSerializer, worker_ttl=HEARTBEAT_S + 15,
                          name=f"run-registry-{socket.gethostname()}-{os.getpid()}")
    worker.work(with_scheduler=False, logging_level="INFO")


@cache
def _wait_for_redis(connection: Any, settings: Settings) -> None:
    """A worker may start before its Redis answers (a host starting both, an add-on still coming
    up): it waits up to REDIS_START_WAIT_S, then refuses to start with one line, not a traceback."""
    import redis

    deadline = time.monotonic() + REDIS_START_WAIT_S
    while True:
        try:
            connection.ping()
            return
        except redis.RedisError as err:
            if time.monotonic() >= deadline:
                sys.exit(f"run-registry worker: refusing to start: the Redis at"
                         f" {registry_url_for_display(settings.registry_url)} does not answer"
                         f" ({err.__class__.__name__}) after {REDIS_START_WAIT_S:g} s")
            time.sleep(0.1)


def own_jobs_worker() -> type[HerokuWorker]:
    """RQ's worker for Heroku-style hosts, for this service's own jobs only, with the job and queue
    classes it reads jobs with (``job_class``, ``queue_class``). Defined on first use: the web
    processes import this module for the job functions, and need no RQ worker."""
    from rq import worker_registration
    from rq.job import Job
    from rq.queue import Queue
    from rq.worker import HerokuWorker

    class OwnJob(Job):
        """A job as this worker reads it: whatever its hash says, it has no callbacks and no
        webhooks, and its function is one of this module's two.

        RQ uses a job outside ``execute_job`` too: its registry maintenance calls an abandoned
        started job's failure callback and sends its webhooks, a stop command calls the stopped
        callback, and the hash ``execute_job`` checks is read a moment after the one RQ made the
        job from. What this class never imports or calls, no such path can.
        """

        @property
        def success_callback(self) -> None:
            return None

        @property
        def failure_callback(self) -> None:
            return None

        @property
        def stopped_callback(self) -> None:
            return None

        @property
        def func(self) -> Any:
            if self.func_name not in _JOBS or self.instance is not None:
                raise ValueError(f"{printable(str(self.func_name), limit=80)!r} is not one of this service's jobs")
            return super().func

        def send_webhooks(self, status: str, *, exc_string: str | None = None) -> None:
            """Nothing: ours have none, and a planted one would make this worker request any URL."""

    class OwnQueue(Queue):
        """This worker's queue, of ``OwnJob``s, which have no dependents."""

        job_class = OwnJob

        def move_dependents_to_ready(self, job: Job, pipeline: Any = None, exclude_job_id: str | None = None,
                                     refresh_job_status: bool = True) -> dict[str, list[str]]:
            # Ours have none: a job that names one of ours as its dependency was planted, and RQ
            # would enqueue it (on whichever queue it names) when ours ends.
            return {}

    class OwnJobsWorker(HerokuWorker):
        job_class = OwnJob
        queue_class = OwnQueue

        def execute_job(self, job: Any, queue: Any) -> None:
            refusal = job_refusal(self.connection.hgetall(job.key), job)
            if refusal is None:
                super().execute_job(job, queue)
                return
            log.error("run-registry worker: job %s refused and deleted: %s", printable(job.id, limit=80), refusal)
            _delete_job(self.connection, job.id, queue.intermediate_queue_key)

        def clean_registries(self) -> None:
            # RQ's maintenance (at start-up, then every 10 minutes) acts on the jobs a worker leaves
            # behind: it fails a started job whose execution expired and one stuck in the
            # intermediate queue, and enqueues ready ones; one it cannot read stops the worker.
            # Anyone who can write to the Redis can leave one there: refuse those first.
            for queue in self.queues:
                _refuse_left_jobs(self.connection, queue)
            super().clean_registries()

        def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
            while True:
                try:
                    return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
                except Exception as err:
                    # A job RQ cannot even read (a pickled one, a hash not RQ's): RQ would stop
                    # the worker, and the next worker would meet it again.
                    job_id, queue = getattr(err, "job_id", None), getattr(err, "queue", None)
                    if job_id is None or queue is None:
                        raise
                    log.error("run-registry worker: job %s refused and deleted: RQ cannot read it (%s)",
                              printable(str(job_id), limit=80), err.__class__.__name__)
                    _delete_job(self.connection, job_id, queue.intermediate_queue_key)

        def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
            # A Redis restarted without its data forgot this worker; RQ's heartbeat would only
            # extend a key that is no longer there, and the fleet would count no workers.
            if pipeline is None and not self.connection.sismember(
                worker_registration.WORKERS_BY_QUEUE_KEY % self.queue_names()[0], self.key
            ):
                with self.connection.pipeline() as registering:
                    registering.hset(self.key, mapping=self.serialize())
                    worker_registration.register(self, registering)
                    registering.execute()
                log.warning("run-registry worker: registered again (Redis had forgotten this worker)")
            super().heartbeat(timeout, pipeline)

    return OwnJobsWorker


def _refuse_left_jobs(connection: Any, queue: Any) -> None:
    """Refuse and delete the jobs in ``queue``'s started-job registry, intermediate queue and ready
    registry (where RQ's maintenance looks) that are not this service's, and the entries there
    RQ cannot read."""
    started, ready = queue.started_job_registry.key, queue.ready_job_registry.key
    intermediate = queue.intermediate_queue_key
    places: dict[bytes, list[tuple[str, bytes]]] = {}  # a job id: where it is (key, member)
    for member in connection.zrange(started, 0, -1):
        if member.count(b":") != 1:  # not <job id>:<execution id> (with more colons, it stops RQ's maintenance)
            log.error("run-registry worker: entry %s of %s refused and removed: it is not RQ's",
                      printable(member.decode(errors="replace"), limit=80), started)
            connection.zrem(started, member)
            continue
        places.setdefault(member.partition(b":")[0], []).append((started, member))
    for member in connection.lrange(intermediate, 0, -1):
        places.setdefault(member, []).append((intermediate, member))
    for member in connection.zrange(ready, 0, -1):
        places.setdefault(member, []).append((ready, member))
    for raw_id, where in places.items():
        job_id = raw_id.decode(errors="replace")
        refusal = _left_job_refusal(connection, queue, job_id)
        if refusal is None:
            continue
        log.error("run-registry worker: job %s refused and deleted (left in %s): %s", printable(job_id, limit=80),
                  ", ".join(sorted({key for key, _ in where})), refusal)
        with connection.pipeline() as pipeline:
            for key, member in where:
                if key == intermediate:
                    pipeline.lrem(key, 0, member)
                else:
                    pipeline.zrem(key, member)
            pipeline.delete(f"rq:job:{job_id}", queue.intermediate_queue.get_first_seen_key(job_id))
            pipeline.execute()


def _left_job_refusal(connection: Any, queue: Any, job_id: str) -> str | None:
    """``job_refusal`` for a job RQ's maintenance would find (``None`` too when its hash is gone:
    RQ drops such an entry unread)."""
    try:
        job = queue.job_class(job_id, connection=connection, serializer=queue.serializer)
    except ValueError:  # RQ's check of a job id: RQ would stop the worker
        return "its id is not RQ's"
    fields = connection.hgetall(job.key)
    if not fields:
        return None
    try:
        job.restore(fields)
    except Exception as err:  # whatever RQ raises reading a hash it did not write
        return f"RQ cannot read it ({err.__class__.__name__})"
    return job_refusal(fields, job)


def _delete_job(connection: Any, job_id: str, intermediate_queue_key: str) -> None:
    with connection.pipeline() as pipeline:
        pipeline.lrem(intermediate_queue_key, 1, job_id)
        pipeline.delete(f"rq:job:{job_id}")
        pipeline.execute()


def _described(horse: _Horse) -> str:
    try:
        identity = horse.engine.identity()
    except EngineUnavailable as err:
        return str(err)
    return f"{identity.name} {identity.version}, engineCodeHash {horse.code_hash.of(identity)}"


if __name__ == "__main__":
    main()
