"""``run-registry check-engine``: is an engine one the service can keep as evidence?

It runs the engine twice, holds every event to what the service records, compares the two
transcripts byte for byte, and names the engineCodeHash the service would give it. Each execution
is a process of its own: a Python engine is run in a new Python process (with a hash seed of its
own, so that an engine leaning on set or dict order shows it); a process engine's run is its own
process anyway; an HTTP engine or an LLM server is asked twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from app.config import ConfigError
from app.config import load_settings
from app.engine import load_engine
from app.engine import spec_problem
from app.engine.base import Engine
from app.engine.base import EngineError
from app.engine.base import EngineUnavailable
from app.engine.base import UnknownScenario
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.engine.events import encoded_size
from app.engine.identity import CodeHash
from app.engine.python import InProcessEngine
from app.engine.python import exception_reason
from app.engine.python import import_engine
from app.models import EncodedEvent
from app.models import encode_events


class EngineCheckFailed(Exception):
    """The engine is not fit: it cannot be loaded, it fails, it yields what the service refuses,
    or it does not reproduce itself. The message says which, in one line."""


@dataclass(frozen=True)
class Execution:
    pid: int | None  # the Python process a Python engine ran in
    events: int
    events_sha256: str
    transcript: bytes  # the events' canonical JSON, as the service digests it
    stderr: tuple[str, ...] = ()  # the first lines the engine wrote to its standard error


@dataclass(frozen=True)
class EngineCheck:
    scenario_id: str
    kind: str
    name: str
    version: str
    engine_code_hash: str
    executions: tuple[Execution, Execution]


def check_engine(spec: str, scenario_id: str | None, seed: int, timeout_s: float) -> EngineCheck:
    """Check ``scenario_id`` (``None``: one the engine names, else ``check-engine``) at ``seed``.

    :raises EngineCheckFailed: with what is wrong.
    """
    if os.getcwd() not in sys.path:  # gunicorn, run where the engine is, finds it there too
        sys.path.insert(0, os.getcwd())
    # The spec's form first: the settings' own message would name RUN_REGISTRY_ENGINE, which the
    # user of check-engine did not set.
    problem = spec_problem(spec)
    if problem:
        raise EngineCheckFailed(problem)
    try:
        settings = load_settings({**os.environ, "RUN_REGISTRY_ENGINE": spec})
        engine = load_engine(settings)
    except ConfigError as err:
        raise EngineCheckFailed(_one_line(str(err).removeprefix(f"RUN_REGISTRY_ENGINE {spec}: "))) from None
    except Exception as err:  # a plugin's failure of any kind, at import: say it in one line
        raise EngineCheckFailed(_one_line(str(err))) from None
    scenario_id = scenario_id or engine.example_scenario() or "check-engine"
    try:
        try:
            engine.check_scenario(scenario_id)
            identity = engine.ready()
        except (EngineUnavailable, UnknownScenario) as err:
            raise EngineCheckFailed(_one_line(str(err))) from None
        code_hash = CodeHash(settings).of(identity)
        if isinstance(engine, InProcessEngine):
            first, second = (_execute_apart(spec, scenario_id, seed, timeout_s, hash_seed) for hash_seed in ("1", "2"))
        else:
            first, second = (_execute(engine, scenario_id, seed, timeout_s) for _ in range(2))
    finally:
        engine.close()
    if first.transcript != second.transcript:
        raise EngineCheckFailed(f"not deterministic: two executions of scenario {scenario_id} seed {seed} differ"
                                f" ({first.events} events, eventsSha256 {first.events_sha256[:12]}..., then"
                                f" {second.events} events, {second.events_sha256[:12]}...){_where(first, second)}")
    return EngineCheck(scenario_id, engine.kind, identity.name, identity.version, code_hash, (first, second))


def _execute(engine: Engine, scenario_id: str, seed: int, timeout_s: float) -> Execution:
    """One execution through the engine's adapter, as the service would run it, stopped at the timeout."""
    stderr: list[str] = []
    try:
        run = engine.run(scenario_id, seed, stderr.append)
    except EngineError as err:
        raise EngineCheckFailed(f"the engine failed: {_one_line(str(err))}") from None
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        run.cancel()

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    try:
        events = _transcript(iter(run))
    except EngineError as err:
        if timed_out.is_set():
            raise EngineCheckFailed(f"the engine did not finish scenario {scenario_id} seed {seed} within"
                                    f" {timeout_s:g} s{_last_words(run.last_words())}") from None
        raise EngineCheckFailed(f"the engine failed: {_one_line(str(err))}") from None
    finally:
        timer.cancel()
        run.end()
    return _execution(None, events, tuple(stderr[:20]))


def _transcript(events: object) -> list[EncodedEvent]:
    encoded: list[EncodedEvent] = []
    size = 0
    for event in events:  # type: ignore[attr-defined]
        encoded.append(event)
        size += encoded_size(event)
        if size > MAX_TRANSCRIPT_BYTES:
            raise EngineError(f"more than {MAX_TRANSCRIPT_BYTES} bytes of events by event {len(encoded)}")
    return encoded


def _execution(pid: int | None, events: list[EncodedEvent], stderr: tuple[str, ...] = ()) -> Execution:
    transcript = encode_events(events)
    return Execution(pid, len(events), hashlib.sha256(transcript).hexdigest(), transcript, stderr)


def _execute_apart(spec: str, scenario_id: str, seed: int, timeout_s: float, hash_seed: str) -> Execution:
    """One execution in a new Python process (this module's ``__main__``), its answer in a file."""
    with tempfile.TemporaryDirectory(prefix="run-registry-check-") as scratch:
        answer = Path(scratch) / "answer.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed,
               "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        try:
            done = subprocess.run([sys.executable, "-m", "app.engine.check", spec, scenario_id, str(seed), str(answer)],
                                  env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EngineCheckFailed(f"the engine did not finish scenario {scenario_id} seed {seed} within"
                                    f" {timeout_s:g} s") from None
        if not answer.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise EngineCheckFailed(f"the engine's process ended with {done.returncode}: {_one_line(last)}")
        result = json.loads(answer.read_text())
    if result.get("problem"):
        raise EngineCheckFailed(result["problem"])
    return dataclasses.replace(_execution(result["pid"], []), events=result["events"],
                               events_sha256=result["eventsSha256"], transcript=bytes.fromhex(result["transcript"]))


def _execute_here(spec: str, scenario_id: str, seed: int) -> dict[str, object]:
    """The engine's transcript, each event held to what the service records (the child's side)."""
    try:
        events = _transcript(iter(InProcessEngine(import_engine(spec), spec).run(scenario_id, seed)))
    except EngineError as err:
        return {"problem": f"the engine failed: {_one_line(str(err))}"}
    except Exception as err:  # the engine's own failure, reported as the service would fail the run
        return {"problem": f"the engine failed: {exception_reason(err)}"}
    execution = _execution(os.getpid(), events)
    return {"pid": execution.pid, "events": execution.events, "eventsSha256": execution.events_sha256,
            "transcript": execution.transcript.hex()}


def _where(first: Execution, second: Execution) -> str:
    left, right = json.loads(first.transcript), json.loads(second.transcript)
    for position, (one, other) in enumerate(zip(left, right, strict=False), start=1):
        if one != other:
            return f"; first at event {position} ({one['type']})"
    return f"; one is longer, from event {min(len(left), len(right)) + 1}"


def _last_words(words: str | None) -> str:
    return f"; its last line on standard error: {words}" if words else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


if __name__ == "__main__":
    spec_, scenario_, seed_, answer_ = sys.argv[1:5]
    Path(answer_).write_text(json.dumps(_execute_here(spec_, scenario_, int(seed_))))
