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
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from functools import cache

from app.code_hash import engine_code_hash
from app.config import ConfigError
from app.config import Settings
from app.config import load_settings
from app.engine import load_engine
from app.engine.base import Engine
from app.logs import configure_json_logging
from app.models import RunIdentity
from app.models import RunKey
from app.registry import make_registry
from app.registry.redis_registry import RedisRegistry
from app.runner import Runner

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class _Horse:
    """What a work-horse needs to execute runs: made once per process, on its first job."""

    settings: Settings
    engine: Engine
    engine_code_hash: str
    registry: RedisRegistry
    runner: Runner


@cache
def _horse() -> _Horse:
    settings = load_settings(os.environ)
    engine = load_engine(settings.engine)
    registry = make_registry(settings)
    assert isinstance(registry, RedisRegistry)  # load_settings refuses workers without Redis
    runner = Runner(registry, engine, settings)
    return _Horse(settings, engine, engine_code_hash(engine, settings), registry, runner)


def execute_run(run_id: str, owner: str, engine_code_hash: str, engine_name: str, engine_version: str) -> str:
    """The job: execute and record one run, if it is still this job's to execute.

    :returns: what happened (kept as the job's result for a while, for operators).
    """
    _die_with_the_worker()
    horse = _horse()
    if engine_code_hash != horse.engine_code_hash:  # its queue is its hash's: a misrouted job
        log.error("run %s is for engineCodeHash %s; this worker runs %s", run_id, engine_code_hash,
                  horse.engine_code_hash)
        return "refused: another engineCodeHash"
    if not horse.registry.take_over(run_id, owner, executor=f"{socket.gethostname()}:{os.getpid()}"):
        log.warning("run %s is not this job's to execute (already taken, or failed waiting)", run_id)
        return "skipped: not this job's run"
    key = RunKey(*_scenario_and_seed(run_id), engine_code_hash)
    identity = RunIdentity.of(key, run_id, engine_name, engine_version)
    horse.runner.slots.take()
    horse.runner.record_to_end(identity, owner)
    return "executed"


def reproduce_run(scenario_id: str, seed: int, engine_code_hash: str) -> tuple[list[tuple[str, bytes]], float]:
    """The job of a verification: the engine's events for the key again, and its time."""
    _die_with_the_worker()
    horse = _horse()
    if engine_code_hash != horse.engine_code_hash:
        raise RuntimeError(f"a verification for engineCodeHash {engine_code_hash} on a worker of another")
    if not horse.runner.slots.take():
        raise RuntimeError("no room for a verification")
    reproduction = horse.runner.reproduce(RunKey(scenario_id, seed, engine_code_hash))
    return reproduction.events, reproduction.seconds


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
    from rq.worker import HerokuWorker

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
    queue = Queue(queue_name(horse.settings, horse.engine_code_hash), connection=connection)
    log.info("run-registry worker: executing runs of %s %s (engineCodeHash %s) from queue %s",
             horse.engine.name, horse.engine.version, horse.engine_code_hash, queue.name)
    worker = HerokuWorker([queue], connection=connection, name=f"run-registry-{socket.gethostname()}-{os.getpid()}")
    worker.work(with_scheduler=False, logging_level="INFO")


def queue_name(settings: Settings, code_hash: str) -> str:
    """One queue per engineCodeHash: a worker takes only its own code's runs."""
    return f"{settings.redis_prefix}runs:{code_hash}"


if __name__ == "__main__":
    main()
