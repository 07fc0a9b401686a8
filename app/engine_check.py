"""``run-registry check-engine``: is an engine one the service can keep as evidence?

It runs the engine twice, each time in a process of its own (with a hash seed of its own, so that
an engine leaning on set or dict order shows it), holds every event to what the runner accepts,
compares the two transcripts byte for byte, and names the engineCodeHash the service would give it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.code_hash import engine_code_hash
from app.config import load_settings
from app.engine import load_engine
from app.models import encode_events
from app.runner import MAX_TRANSCRIPT_BYTES
from app.runner import MalformedEvent
from app.runner import encoded_event


class EngineCheckFailed(Exception):
    """The engine is not fit: it cannot be loaded, it fails, it yields what the service refuses,
    or it does not reproduce itself. The message says which, in one line."""


@dataclass(frozen=True)
class Execution:
    pid: int
    events: int
    events_sha256: str
    transcript: bytes  # the events' canonical JSON, as the service digests it


@dataclass(frozen=True)
class EngineCheck:
    name: str
    version: str
    engine_code_hash: str
    executions: tuple[Execution, Execution]


def check_engine(spec: str, scenario_id: str, seed: int, timeout_s: float) -> EngineCheck:
    """:raises EngineCheckFailed: with what is wrong."""
    if os.getcwd() not in sys.path:  # gunicorn, run where the engine is, finds it there too
        sys.path.insert(0, os.getcwd())
    try:
        engine = load_engine(spec)
        code_hash = engine_code_hash(engine, load_settings(os.environ))
    except Exception as err:  # a plugin's failure of any kind, at import: say it in one line
        raise EngineCheckFailed(_one_line(str(err))) from None
    first, second = (_execute_apart(spec, scenario_id, seed, timeout_s, hash_seed) for hash_seed in ("1", "2"))
    if first.transcript != second.transcript:
        raise EngineCheckFailed(f"not deterministic: two executions of scenario {scenario_id} seed {seed} differ"
                                f" ({first.events} events, eventsSha256 {first.events_sha256[:12]}..., then"
                                f" {second.events} events, {second.events_sha256[:12]}...){_where(first, second)}")
    return EngineCheck(engine.name, engine.version, code_hash, (first, second))


def _execute_apart(spec: str, scenario_id: str, seed: int, timeout_s: float, hash_seed: str) -> Execution:
    """One execution in a new Python process (this module's ``__main__``), its answer in a file."""
    with tempfile.TemporaryDirectory(prefix="run-registry-check-") as scratch:
        answer = Path(scratch) / "answer.json"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed,
               "PYTHONPATH": os.pathsep.join(path for path in sys.path if path)}
        try:
            done = subprocess.run([sys.executable, "-m", "app.engine_check", spec, scenario_id, str(seed), str(answer)],
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
    transcript = bytes.fromhex(result["transcript"])
    return Execution(result["pid"], result["events"], result["eventsSha256"], transcript)


def _execute_here(spec: str, scenario_id: str, seed: int) -> dict[str, object]:
    """The engine's transcript, each event held to what the service records (the child's side)."""
    engine = load_engine(spec)
    encoded = []
    size = 0
    try:
        for position, event in enumerate(engine.run(scenario_id, seed), start=1):
            try:
                encoded.append(encoded_event(event))
            except MalformedEvent as malformed:
                return {"problem": f"malformed: event {position} is refused: {malformed}"}
            size += len(encoded[-1][1]) + len(encoded[-1][0]) + 20
            if size > MAX_TRANSCRIPT_BYTES:
                return {"problem": f"too large: over {MAX_TRANSCRIPT_BYTES} bytes of events by event {position}"}
    except Exception as err:  # the engine's own failure, reported as the service would fail the run
        return {"problem": f"the engine raised {type(err).__name__}: {_one_line(str(err))}"}
    if not encoded:
        return {"problem": "the engine yielded no events"}
    transcript = encode_events(encoded)
    return {"pid": os.getpid(), "events": len(encoded), "eventsSha256": hashlib.sha256(transcript).hexdigest(),
            "transcript": transcript.hex()}


def _where(first: Execution, second: Execution) -> str:
    left, right = json.loads(first.transcript), json.loads(second.transcript)
    for position, (one, other) in enumerate(zip(left, right, strict=False), start=1):
        if one != other:
            return f"; first at event {position} ({one['type']})"
    return f"; one is longer, from event {min(len(left), len(right)) + 1}"


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


if __name__ == "__main__":
    spec_, scenario_, seed_, answer_ = sys.argv[1:5]
    Path(answer_).write_text(json.dumps(_execute_here(spec_, scenario_, int(seed_))))
