"""Where runs execute: on real threads of this web process (``local``), or on the Procfile's
``worker`` processes through an RQ job queue on the same Redis (``queue``)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Protocol

from app.config import Settings
from app.engine.base import Engine
from app.engine.identity import CodeHash
from app.models import RunIdentity
from app.models import RunKey
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.runs.jobs import EXECUTE_RUN
from app.runs.jobs import REPRODUCE_RUN
from app.runs.runner import EngineFault
from app.runs.runner import Reproduction
from app.runs.runner import Runner


class Execution(Protocol):
    """Executes the runs the service starts, and reproductions for verifications."""

    def reserve(self) -> bool:
        """Room for one more execution, taken now; ``False`` when there is none (503)."""
        ...

    def release(self) -> None:
        """Give back a reservation that was not used (the run was found, not started)."""
        ...

    def execute(self, identity: RunIdentity, owner: str) -> None:
        """Execute a run the registry has just started under ``owner``, with a reservation taken.
        Returns at once; the run records itself."""
        ...

    def reproduce(self, key: RunKey, run_id: str) -> Reproduction:
        """Execute the engine for ``key`` again (verifying ``run_id``) and wait for its events, with
        a reservation taken.

        :raises EngineFault: the engine failed, or did not finish within the engine timeout.
        :raises RegistryUnavailable: the queue could not be reached.
        """
        ...

    def in_use(self) -> int:
        """Executions running or waiting here (local), or queued for workers (queue)."""
        ...

    def workers(self) -> int | None:
        """Workers serving this engineCodeHash, or ``None`` where there are none to count (local)."""
        ...


def queue_key(engine: Engine, code_hash: CodeHash) -> str:
    """One queue per engineCodeHash, so a worker takes only its own code's runs during a rolling
    deploy; per engine for a remote one, whose code is not the worker's and may change under
    every worker at once (a job then says which engineCodeHash its run was started for).

    """
    if engine.remote:
        return "remote-" + hashlib.sha256(engine.spec.encode()).hexdigest()[:32]
    return code_hash.of(engine.identity())


def queue_name(settings: Settings, key: str) -> str:
    return f"{settings.redis_prefix}runs:{key}"


class LocalExecution:
    """Runs on real threads of this process (``RUN_REGISTRY_EXECUTION=local``, the default)."""

    def __init__(self, registry: Registry, engine: Engine, settings: Settings) -> None:
        self.runner = Runner(registry, engine, settings)

    def reserve(self) -> bool:
        return self.runner.slots.take()

    def release(self) -> None:
        self.runner.slots.give_back()

    def execute(self, identity: RunIdentity, owner: str) -> None:
        self.runner.execute(identity, owner)

    def reproduce(self, key: RunKey, run_id: str) -> Reproduction:
        return self.runner.reproduce(key, run_id)

    def in_use(self) -> int:
        return self.runner.slots.in_use

    def workers(self) -> int | None:
        return None


class QueuedExecution:
    """Runs on workers (``RUN_REGISTRY_EXECUTION=queue``): one RQ queue per engineCodeHash (per
    engine, for a remote one: ``queue_key``).

    A run is enqueued only by the process that started it, holding its owner token, and handed
    over with a deadline: if no worker takes it within ``RUN_REGISTRY_QUEUE_WAIT_S`` it fails.
    """

    def __init__(self, registry: Registry, settings: Settings, queue_key: str) -> None:
        from rq import Queue
        from rq.serializers import JSONSerializer

        from app.registry.redis_connection import redis_client
        from app.registry.redis_registry import RedisRegistry

        if not isinstance(registry, RedisRegistry):
            raise TypeError("queue execution needs the Redis registry")
        self._registry = registry
        self._settings = settings
        url, timeout_ms = settings.registry_url, settings.redis_timeout_ms
        # JSON, not RQ's default pickle: a worker reading a job must not run what its bytes say.
        self._queue = Queue(queue_name(settings, queue_key), connection=redis_client(url, timeout_ms),
                            serializer=JSONSerializer)
        # Waiting for a verification's result blocks on Redis for up to the engine timeout.
        self._results = redis_client(url, timeout_ms, blocking_read_s=settings.engine_timeout_s + 10)

    def reserve(self) -> bool:
        with _unavailable_on_queue_errors():
            return self._queue.count < self._settings.queue_max

    def release(self) -> None:
        """Nothing was taken: the queue's length is the reservation."""

    def execute(self, identity: RunIdentity, owner: str) -> None:
        wait_ms = round(self._settings.queue_wait_s * 1000)
        self._registry.hand_over(identity.run_id, owner, wait_ms)
        with _unavailable_on_queue_errors():
            self._queue.enqueue_call(
                EXECUTE_RUN,
                args=(identity.run_id, owner, identity.engine_code_hash, identity.engine_name, identity.engine_version),
                job_id=f"run-{identity.run_id}-{owner[:8]}",
                timeout=round(self._settings.engine_timeout_s) + 30,  # the work-horse's hard limit
                ttl=round(self._settings.queue_wait_s) + 5,  # a job no worker took in time is dropped
                result_ttl=600,
                failure_ttl=3600,
            )

    def reproduce(self, key: RunKey, run_id: str) -> Reproduction:
        from rq.job import Job
        from rq.job import JobStatus
        from rq.serializers import JSONSerializer

        with _unavailable_on_queue_errors():
            job = self._queue.enqueue_call(
                REPRODUCE_RUN, args=(key.scenario_id, key.seed, key.engine_code_hash, run_id),
                timeout=round(self._settings.engine_timeout_s) + 30,
                ttl=round(self._settings.queue_wait_s), result_ttl=60, failure_ttl=600,
            )
            result = Job.fetch(job.id, connection=self._results, serializer=JSONSerializer).latest_result(
                timeout=round(self._settings.queue_wait_s + self._settings.engine_timeout_s)
            )
        if result is None or result.type != result.Type.SUCCESSFUL:
            status = job.get_status(refresh=True)
            if result is None and status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                raise EngineFault(f"No worker took the verification of scenario {key.scenario_id} seed"
                                  f" {key.seed} in time")
            raise EngineFault(_job_failure(key, result))
        returned: tuple[list[tuple[str, str]], float] = result.return_value  # type: ignore[assignment]
        events, seconds = returned
        return Reproduction([(event_type, data.encode()) for event_type, data in events], seconds)

    def in_use(self) -> int:
        with _unavailable_on_queue_errors():
            return self._queue.count

    def workers(self) -> int | None:
        from rq import Worker

        with _unavailable_on_queue_errors():
            return Worker.count(queue=self._queue)


def _job_failure(key: RunKey, result: object) -> str:
    """What a failed verification job says: the worker's EngineFault message (its reason), if it has one."""
    reason = str(getattr(result, "exc_string", "") or "").strip().splitlines()
    raised = f"{EngineFault.__module__}.{EngineFault.__qualname__}: "  # as the worker's traceback names it
    fault = next((line.split(": ", 1)[1] for line in reversed(reason) if line.startswith(raised)), None)
    return fault or f"The engine failed to run scenario {key.scenario_id} seed {key.seed}"


@contextlib.contextmanager
def _unavailable_on_queue_errors() -> Iterator[None]:
    import redis

    try:
        yield
    except redis.RedisError as err:
        raise RegistryUnavailable(f"queue: {err.__class__.__name__}") from err
