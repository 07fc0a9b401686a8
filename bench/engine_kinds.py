"""Engines of other kinds against floors measured in the same run.

- A process engine's run, lookup to done through the registry, against the same command run
  directly with the same request on its standard input (the engine's own start-up is the floor:
  what the registry adds is the ratio's distance from 1).
- An event's way from a process engine's standard output to a live SSE client, against the same
  way from a Python engine's ``yield`` (both stamped as they are made, the client on loopback).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from app.config import ENGINE_INHERITS
from bench import live
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import require_binary

PROCESS_ENGINE = ROOT / "examples" / "engines" / "process-engine.mjs"


def measure(scratch: Path, runs: int = 30, latency_runs: int = 3, delay_ms: int = 10) -> dict[str, str]:
    figures = run_against_the_command(scratch, runs)
    figures.update(event_latency(scratch, latency_runs, delay_ms))
    return figures


def run_against_the_command(scratch: Path, runs: int) -> dict[str, str]:
    """Medians of ``runs`` interleaved pairs: the command by hand, and a lookup of a new key."""
    command = [require_binary("node"), str(PROCESS_ENGINE)]
    env = {"RUN_REGISTRY_ENGINE": "command:" + shlex.join(command), "RUN_REGISTRY_ACCESS_LOG": "off",
           "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0"}
    direct, registry = [], []
    with Gunicorn(scratch / "process-engine.log", env=env) as server:
        _lookup(server, "warm-up", 0)
        for index in range(runs):
            direct.append(_direct(command, "pricing-v1", 10_000 + index))
            registry.append(_lookup(server, "pricing-v1", 20_000 + index))
    direct_ms, registry_ms = statistics.median(direct) * 1000, statistics.median(registry) * 1000
    return {
        "process engine (examples/engines, node), lookup to done against the command run directly":
            f"{direct_ms / registry_ms:.2f}x (registry {registry_ms:.1f} ms, the command alone {direct_ms:.1f} ms;"
            f" medians of {runs} each, interleaved)",
    }


def _direct(command: list[str], scenario_id: str, seed: int) -> float:
    """The command with one request on its standard input, to its exit, in the environment the
    service gives it (this machine's NODE_EXTRA_CA_CERTS alone costs node 60 ms at start-up)."""
    request = json.dumps({"protocol": "run-registry-engine/1", "op": "run", "scenarioId": scenario_id, "seed": seed})
    environment = {name: os.environ[name] for name in ENGINE_INHERITS if name in os.environ}
    started = time.perf_counter()
    done = subprocess.run(command, input=request + "\n", capture_output=True, text=True, check=True, env=environment)
    elapsed = time.perf_counter() - started
    assert done.stdout.count("\n") > 100, done.stderr
    return elapsed


def _lookup(server: Gunicorn, scenario_id: str, seed: int) -> float:
    started = time.perf_counter()
    answer = http("GET", f"{server.url}/runs/lookup?scenarioId={scenario_id}&seed={seed}", timeout=30)
    elapsed = time.perf_counter() - started
    assert answer.status == 200 and answer.json()["source"] == "new", answer.body
    return elapsed


def event_latency(scratch: Path, runs: int, delay_ms: int) -> dict[str, str]:
    """p50 and p99 from an event's making to a live client: a Python engine's and a process engine's."""
    times_file = scratch / "kind-event-times"
    common = {"BENCH_EVENT_TIMES": str(times_file), "RUN_REGISTRY_ACCESS_LOG": "off"}
    kinds = {
        "python engine (yield)": {"RUN_REGISTRY_ENGINE": "bench.engines:TimestampingEngine",
                                  "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": str(delay_ms)},
        "process engine (stdout)": {
            "RUN_REGISTRY_ENGINE": f"command:{sys.executable} {ROOT / 'bench' / 'stamping_engine.py'}",
            "RUN_REGISTRY_ENGINE_ENV": "BENCH_EVENT_TIMES,BENCH_EVENT_DELAY_MS", "BENCH_EVENT_DELAY_MS": str(delay_ms)},
    }
    figures, p99 = {}, {}
    for kind, env in kinds.items():
        with Gunicorn(scratch / "kind-latency.log", env={**common, **env}) as server:
            values = live._latencies(server, server, times_file, runs, kind.split()[0])
        p99[kind] = live.percentile(values, 0.99) * 1000
        figures[f"event creation to a live client, {kind}"] = (
            f"p50 {live.percentile(values, 0.5) * 1000:.2f} ms, p99 {p99[kind]:.2f} ms over {len(values)} events")
    python_p99, process_p99 = p99.values()
    figures["p99 of a process engine's event to a live client, less a Python engine's"] = (
        f"{process_p99 - python_p99:+.2f} ms")
    return figures
