"""Which jobs the worker takes: this service's two, as JSON, with arguments of their shape, and
nothing else a job can ask of a worker.

Anyone who can write to the Redis can put a job on the queue, and RQ runs whatever function a
job names (``os.system`` too) and, with its default pickle serializer, whatever a job's bytes
unpickle to. So jobs are JSON (RQ's ``JSONSerializer``: reading one runs nothing), and the
worker executes a job only when it is one of ``app.worker``'s two, with arguments of their shape
and nothing else a job can ask of a worker (callbacks, webhooks, dependencies); anything else
is logged and deleted unread. RQ also acts on jobs outside execution, in its registry
maintenance (an abandoned job's failure callback, its webhooks): the worker's jobs never name
a callback or a webhook whatever their hash says, nor a function but the two, and its
maintenance refuses what was left where RQ looks before RQ looks (``own_jobs_worker``). The
Redis still needs a password (docs/deploying.md).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from typing import Any

from app.schemas import MAX_SAFE_INTEGER
from app.schemas import RUN_ID_PATTERN
from app.schemas import SCENARIO_ID_PATTERN
from app.text import printable

if TYPE_CHECKING:
    from rq.worker import HerokuWorker

log = logging.getLogger(__name__)
# The two jobs, as the web enqueues them and RQ imports them: functions of the worker's module.
EXECUTE_RUN = "app.worker.execute_run"
REPRODUCE_RUN = "app.worker.reproduce_run"
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


def _execute_run_arguments(args: list[Any]) -> bool:
    return (len(args) == 5 and all(isinstance(arg, str) for arg in args) and bool(_RUN_ID(args[0]))
            and bool(_OWNER(args[1])) and all(_NAME(arg) for arg in args[2:]))


def _reproduce_run_arguments(args: list[Any]) -> bool:
    return (len(args) == 4 and isinstance(args[0], str) and bool(SCENARIO_ID_PATTERN.match(args[0]))
            and type(args[1]) is int and -MAX_SAFE_INTEGER <= args[1] <= MAX_SAFE_INTEGER
            and isinstance(args[2], str) and bool(_NAME(args[2])) and isinstance(args[3], str)
            and bool(_RUN_ID(args[3])))


# By their import path: the worker runs as __main__ (python -m app.worker), the web enqueues by path.
_JOBS = {EXECUTE_RUN: _execute_run_arguments, REPRODUCE_RUN: _reproduce_run_arguments}


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
