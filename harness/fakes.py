"""Test doubles for the engine: counting, gated (slow on demand), failing, malformed."""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Any


class FakeEngine:
    """A tiny deterministic engine that counts its runs.

    ``gates`` maps a scenarioId to an Event the run waits for, to make that key slow.
    ``failures`` is how many runs raise before runs succeed again.
    """

    name = "fake"
    version = "1"

    def __init__(self, failures: int = 0, gates: dict[str, threading.Event] | None = None) -> None:
        self.calls = 0
        self.failures = failures
        self.gates = gates or {}
        self.started = threading.Event()
        self._lock = threading.Lock()

    def run(self, scenario_id: str, seed: int) -> list[dict[str, Any]]:
        with self._lock:
            self.calls += 1
            fail = self.failures > 0
            self.failures -= fail
        self.started.set()
        gate = self.gates.get(scenario_id)
        if gate is not None and not gate.wait(timeout=30):
            raise TimeoutError("test gate never opened")
        if fail:
            raise RuntimeError("engine exploded")
        return transcript(scenario_id, seed)


def transcript(scenario_id: str, seed: int) -> list[dict[str, Any]]:
    """What FakeEngine returns for a key."""
    session = f"session_{seed:x}" if seed >= 0 else f"session_n{-seed:x}"
    return [
        {"type": "start", "data": {"sessionId": session, "scenarioId": scenario_id, "seed": seed}},
        {"type": "token", "data": {"text": "Évaluation", "tokenIndex": 1}},
        {"type": "token", "data": {"text": f" {scenario_id}", "tokenIndex": 2}},
        {"type": "report", "data": {"score": seed % 7}},
        {"type": "done", "data": {"sessionId": session, "totalTokens": 2}},
    ]


class MalformedEngine:
    """Returns the given events as they are, however wrong."""

    name = "malformed"
    version = "1"

    def __init__(self, events: Any) -> None:
        self.events = events

    def run(self, scenario_id: str, seed: int) -> Any:
        return self.events


class ChangingEngine:
    """Deliberately non-deterministic: every run tells a different story."""

    name = "changing"
    version = "1"

    def __init__(self) -> None:
        self.calls = 0

    def run(self, scenario_id: str, seed: int) -> list[dict[str, Any]]:
        self.calls += 1
        events = transcript(scenario_id, seed)
        events[2] = {"type": "token", "data": {"text": f" run {self.calls}", "tokenIndex": 2}}
        return events


class DriftingEngine:
    """Deterministic, but for scenarios named ``drift...``: each of their executions, in whatever
    process, tells a story of its own (a random token), as an engine that reads a clock or an
    unseeded generator would. One engine for the ledger's every case on one server."""

    name = "drifting"
    version = "1"

    def run(self, scenario_id: str, seed: int) -> list[dict[str, Any]]:
        events = transcript(scenario_id, seed)
        if scenario_id.startswith("drift"):
            events[2] = {"type": "token", "data": {"text": f" {os.urandom(8).hex()}", "tokenIndex": 2}}
        return events


FORMULA_TEXTS = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd", "  =1+1", "safe -1"]


class FormulaEngine:
    """Tokens a spreadsheet would execute, and markup a browser would, if either were trusted."""

    name = "formula"
    version = "1"

    def run(self, scenario_id: str, seed: int) -> list[dict[str, Any]]:
        texts = [*FORMULA_TEXTS, "<img src=x onerror=\"document.title='owned'\">"]
        return [
            {"type": "start", "data": {"sessionId": "session_f", "scenarioId": scenario_id, "seed": seed}},
            *({"type": "token", "data": {"text": text, "tokenIndex": index}} for index, text in enumerate(texts, 1)),
            {"type": "report", "data": {"<b>metric</b>": 1}},
            {"type": "done", "data": {"sessionId": "session_f", "totalTokens": len(texts)}},
        ]


class FileCountingEngine:
    """Counts executions across processes: each run appends ``<pid> <scenarioId> <seed> <parent pid>``
    to a file (O_APPEND is atomic), so a test knows which process executed what.

    Selected in a real gunicorn with ``RUN_REGISTRY_ENGINE=harness.fakes:FileCountingEngine``;
    ``RUN_REGISTRY_TEST_EXECUTIONS`` names the file, ``RUN_REGISTRY_TEST_ENGINE_DELAY_S`` makes
    each run slow enough for concurrent lookups to collide.
    """

    name = "file-counting"
    version = "1"

    def __init__(self) -> None:
        self.path = os.environ["RUN_REGISTRY_TEST_EXECUTIONS"]
        self.delay = float(os.environ.get("RUN_REGISTRY_TEST_ENGINE_DELAY_S", "0"))

    def run(self, scenario_id: str, seed: int) -> list[dict[str, Any]]:
        with open(self.path, "a") as executions:
            executions.write(f"{os.getpid()} {scenario_id} {seed} {os.getppid()}\n")
        time.sleep(self.delay)
        return transcript(scenario_id, seed)


class SteppedEngine:
    """Yields ``transcript(scenario, seed)`` one event at a time, each when the test allows it.

    ``step(n)`` lets n more events through; ``fail_at`` makes the run raise instead of yielding
    that position. A streaming engine whose pace the test sets.
    """

    name = "stepped"
    version = "1"

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.yielded = 0
        self.fail_at = fail_at
        self._allowed = threading.Semaphore(0)

    def step(self, events: int = 1) -> None:
        for _ in range(events):
            self._allowed.release()

    def run(self, scenario_id: str, seed: int):
        self.calls += 1
        for position, event in enumerate(transcript(scenario_id, seed), start=1):
            if not self._allowed.acquire(timeout=30):
                raise TimeoutError("the test never let the event through")
            if position == self.fail_at:
                raise RuntimeError("engine exploded mid-run")
            self.yielded += 1
            yield event


class FailingMidRunEngine:
    """Yields the first two events of ``transcript``, then fails: a run that breaks halfway."""

    name = "failing-mid-run"
    version = "1"

    def run(self, scenario_id: str, seed: int):
        yield from transcript(scenario_id, seed)[:2]
        raise RuntimeError("engine exploded mid-run")


class ScenarioPacedEngine:
    """A streaming engine whose scenarioId says how it behaves, so one server serves every case.

    ``paced-<ms>-<tokens>``: a start, ``<tokens>`` tokens, a report and a done, ``<ms>`` apart
    (``paced-<ms>-<tokens>-breaks``: the same, failing instead of its report);
    a scenarioId starting ``breaks`` fails after its first two events; ``series-<points>`` reports a
    series of that many points; anything else is ``transcript(scenario, seed)`` at once. Pacing
    changes when events come, never what they are.
    """

    name = "scenario-paced"
    version = "1"

    def run(self, scenario_id: str, seed: int):
        paced = re.fullmatch(r"paced-(\d+)-(\d+)(-breaks)?", scenario_id)
        series = re.fullmatch(r"series-(\d+)", scenario_id)
        if series is not None:
            points = [[index, (index * 7919 + seed) % 1000] for index in range(int(series.group(1)))]
            yield {"type": "start", "data": {"seed": seed}}
            yield {"type": "report", "data": {"points": len(points),
                                              "series": [{"name": "noise", "x": "n", "y": "value", "points": points}]}}
            yield {"type": "done", "data": {}}
            return
        if paced is None:
            events = transcript(scenario_id, seed)
            if scenario_id.startswith("breaks"):
                yield from events[:2]
                raise RuntimeError("engine exploded mid-run")
            yield from events
            return
        delay, tokens = int(paced.group(1)) / 1000, int(paced.group(2))
        session = f"session_{seed:x}"
        events = [{"type": "start", "data": {"sessionId": session, "scenarioId": scenario_id, "seed": seed}}]
        events += [{"type": "token", "data": {"text": f" t{index}", "tokenIndex": index}}
                   for index in range(1, tokens + 1)]
        events += [{"type": "report", "data": {"tokens": tokens}},
                   {"type": "done", "data": {"sessionId": session, "totalTokens": tokens}}]
        for position, event in enumerate(events, start=1):
            time.sleep(delay)
            if paced.group(3) and position == len(events) - 1:
                raise RuntimeError("engine exploded mid-run")
            yield event
