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

Only this service's two jobs are executed, as JSON, with arguments of their shape; anything
else is refused and deleted unread, also where RQ's own maintenance would act on it
(``app.runs.jobs``). The Redis still needs a password (docs/deploying.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from app.config import ConfigError
from app.config import Settings
from app.config import load_settings
from app.config import registry_url_for_display
from app.engine import load_engine
from app.engine.base import Engine
from app.engine.base import EngineUnavailable
from app.engine.identity import CodeHash
from app.logs import configure_json_logging
from app.models import RunError
from app.models import RunIdentity
from app.models import RunKey
from app.registry import make_registry
from app.registry.redis_registry import RedisRegistry
from app.runs.execution import queue_key
from app.runs.execution import queue_name
from app.runs.jobs import own_jobs_worker
from app.runs.runner import EngineFault
from app.runs.runner import Runner

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
# How often an idle worker tells Redis it is alive (RQ's default is every 405 s): after a Redis
# restart it registers again within this, so /readyz counts it (docs/operations.md).
HEARTBEAT_S = 10
REDIS_START_WAIT_S = 10.0


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


def _described(horse: _Horse) -> str:
    try:
        identity = horse.engine.identity()
    except EngineUnavailable as err:
        return str(err)
    return f"{identity.name} {identity.version}, engineCodeHash {horse.code_hash.of(identity)}"


if __name__ == "__main__":
    main()
