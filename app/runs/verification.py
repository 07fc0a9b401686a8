"""VerificationService: execute a run again and check it reproduces; compare two runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from app.access import Caller
from app.errors import EngineFailed
from app.errors import EngineMismatch
from app.errors import RateLimited
from app.errors import RunNotFound
from app.errors import RunRunning
from app.errors import Unavailable
from app.evidence.diff import RunFacts
from app.evidence.diff import TranscriptDiff
from app.evidence.diff import diff_facts
from app.evidence.diff import first_difference
from app.evidence.transcripts import TranscriptCache
from app.models import LedgerEntry
from app.models import RunKey
from app.models import RunRecord
from app.models import Source
from app.models import cache_key
from app.models import encode_events
from app.registry.base import Registry
from app.runs.execution import Execution
from app.runs.gate import RunGate
from app.runs.outage import registry_errors
from app.runs.runner import EngineFault
from app.runs.runner import log_divergence
from app.runs.service import RunService
from app.runs.single_flight import SingleFlight
from app.serving.concurrency import off_the_hub
from app.text import printable

T = TypeVar("T")


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


class VerificationService:
    """Whether a run reproduces (its engine executed again, the transcripts held byte for byte
    against each other and the key's ledger entry), and how two runs differ. Runs are looked up
    and read through the ``RunService``; what it executes goes through the same gate and
    execution as a run."""

    def __init__(self, runs: RunService, registry: Registry, gate: RunGate, execution: Execution,
                 transcripts: TranscriptCache) -> None:
        self._runs = runs
        self._registry = registry
        self._gate = gate
        self._execution = execution
        self._transcripts = transcripts
        self._verifications: SingleFlight[Verification] = SingleFlight()

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
        code_hash = self._gate.engine_code_hash
        with registry_errors:
            missing = {name: side for name, side in sides.items()
                       if not self._registry.peek(cache_key(RunKey(*side, code_hash)))}
        if missing and not start:
            name, (scenario_id, seed) = next(iter(missing.items()))
            raise RunNotFound(f"{name}: scenario {scenario_id} seed {seed} has no run; compare with"
                              ' "start": true to start it')
        if missing:
            for scenario_id, _ in missing.values():
                if self._gate.names_scenarios:
                    self._gate.check_scenario(scenario_id)
            caller.require("run")
            self._gate.admit(caller.limit_key, cost=len(set(missing.values())))
        # Both started first, then waited for together: the wait is the lookup's, not twice it.
        left_lookup = self._runs.lookup(*left, caller, wait_s=0, admitted=bool(missing))
        right_lookup = self._runs.lookup(*right, caller, wait_s=0, admitted=bool(missing))
        deadline = time.monotonic() + wait_s
        left_record = self._runs.done_run(left_lookup.run_id, wait_s, caller)
        right_record = self._runs.done_run(right_lookup.run_id, max(0.0, deadline - time.monotonic()), caller)
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
        state = self._runs.run(run_id)
        if state.status == "running":
            raise RunRunning(f"Run {printable(run_id)} is still running; verify it once it is done")
        record = self._runs.done_run(run_id, 0)
        code_hash = self._gate.engine_code_hash
        if record.identity.engine_code_hash != code_hash:
            raise EngineMismatch(
                f"Run {run_id} was recorded under engineCodeHash {record.identity.engine_code_hash};"
                f" this service runs {code_hash}"
            )
        verification, _ = _as_own_client(
            caller.limit_key, lambda: self._verifications.run(record.run_id, lambda: self._reproduce(record, caller))
        )
        return verification

    def verification_callers(self, run_id: str) -> int:
        """How many requests share the run's verification now (0 when none is running)."""
        return self._verifications.callers(run_id)

    def _reproduce(self, record: RunRecord, caller: Caller) -> Verification:
        self._gate.ready_engine(record.identity.scenario_id)
        self._gate.admit(caller.limit_key)
        with registry_errors:
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
        with registry_errors:
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
