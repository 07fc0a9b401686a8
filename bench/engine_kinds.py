"""Engines of other kinds against floors measured in the same run.

- A process engine's run, lookup to done through the registry, against the same command run
  directly with the same request on its standard input (the engine's own start-up is the floor:
  what the registry adds is the ratio's distance from 1).
- An event's way from a process engine's standard output to a live SSE client, against the same
  way from a Python engine's ``yield`` (both stamped as they are made, the client on loopback).
- An LLM run (a real llama.cpp) through the registry, against the same request sent straight to
  the server; and a token's way from the server's write to a live SSE client.
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
from typing import Any

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
    figures.update(llm(scratch, runs, latency_runs=max(latency_runs, runs)))
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


def llm(scratch: Path, runs: int = 30, latency_runs: int = 30, token_delay_ms: int = 20,
        lengths: tuple[int, ...] = (40, 200)) -> dict[str, str]:
    """A real llama.cpp (harness/llm_rig.py): a run through the registry against the same request
    sent straight to the server and its stream read by a client (httpx and httpx-sse, as the
    registry reads it), for runs of a few lengths; and each token's way from the server's write to
    a live SSE client."""
    import httpx

    from harness.llm_rig import LlamaServer

    figures = {}
    with LlamaServer(scratch / "llm.log") as server:
        scenarios = _scenarios(scratch, server.model_id, lengths)
        env = {"RUN_REGISTRY_ENGINE": f"openai:{server.url}", "RUN_REGISTRY_SCENARIOS": str(scenarios),
               "RUN_REGISTRY_ACCESS_LOG": "off", "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0"}
        # One client for every direct request, its connection kept alive, as the registry keeps its own.
        with Gunicorn(scratch / "llm-registry.log", env=env) as service, httpx.Client(timeout=30) as straight:
            for tokens in lengths:
                scenario = f"bench-{tokens}"
                body = json.loads(scenarios.read_text())[scenario]
                _lookup(service, scenario, 0)
                direct, registry = [], []
                for index in range(runs):
                    direct.append(_straight(straight, server.url, body, 10_000 + index))
                    registry.append(_lookup(service, scenario, 20_000 + index))
                direct_ms, registry_ms = statistics.median(direct) * 1000, statistics.median(registry) * 1000
                figures[f"LLM run (llama.cpp, tiny model, {tokens} tokens), lookup to done against the same request"
                        " sent straight to the server"] = (
                    f"{direct_ms / registry_ms:.2f}x (registry {registry_ms:.1f} ms, the server alone"
                    f" {direct_ms:.1f} ms, {registry_ms - direct_ms:.1f} ms more; medians of {runs} each, interleaved)")
    times = scratch / "llm-chunk-times"
    with LlamaServer(scratch / "llm-paced.log", token_delay_ms=token_delay_ms, chunk_times=times) as server:
        env = {"RUN_REGISTRY_ENGINE": f"openai:{server.url}", "RUN_REGISTRY_SCENARIOS": str(scenarios),
               "RUN_REGISTRY_ACCESS_LOG": "off", "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0"}
        with Gunicorn(scratch / "llm-latency.log", env=env) as service:
            first, every = _token_latencies(service, times, latency_runs, f"bench-{lengths[0]}")
    figures["an LLM's first token, from the server's write to a live SSE client"] = (
        f"p50 {live.percentile(first, 0.5) * 1000:.2f} ms, p99 {live.percentile(first, 0.99) * 1000:.2f} ms"
        f" over {len(first)} runs (every token: p99 {live.percentile(every, 0.99) * 1000:.2f} ms over {len(every)})")
    return figures


def _scenarios(scratch: Path, model: str, lengths: tuple[int, ...]) -> Path:
    path = scratch / "scenarios.json"
    path.write_text(json.dumps({f"bench-{tokens}": {"model": model, "temperature": 0.8, "max_tokens": tokens,
                                                     "messages": [
        {"role": "system", "content": "You are a pricing analyst."},
        {"role": "user", "content": "Recommend a price for the spring sale."}]} for tokens in lengths}))
    return path


def _straight(client: Any, url: str, body: dict[str, object], seed: int) -> float:
    """The scenario's request, sent straight to the server, its tokens read from the stream as they come."""
    from httpx_sse import EventSource

    request = {**body, "seed": seed, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    text = []
    with client.stream("POST", f"{url}/chat/completions", json=request) as answer:
        for message in EventSource(answer).iter_sse():
            if message.data == "[DONE]":
                break
            for choice in json.loads(message.data)["choices"]:
                text.append(choice["delta"].get("content") or "")
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200 and text, answer.status_code
    return elapsed


def _token_latencies(service: Gunicorn, times: Path, runs: int, scenario: str) -> tuple[list[float], list[float]]:
    import asyncio

    from harness.servers import http10_get

    first, every = [], []
    for index in range(runs):
        seed = 30_000 + index
        run_id = http("GET", f"{service.url}/runs/lookup?scenarioId={scenario}&seed={seed}",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        arrivals: dict[int, float] = {}
        previous = [b""]

        def heard(line: bytes, when: float, arrivals=arrivals, previous=previous) -> None:
            if previous[0] == b"event: token\n" and line.startswith(b"data: "):
                arrivals[json.loads(line[6:])["tokenIndex"]] = when
            previous[0] = line

        asyncio.run(http10_get(service.port, f"/runs/{run_id}/events", {"Accept": "text/event-stream"}, heard))
        written = {int(n): float(at) / 1000 for line_seed, n, at in
                   (line.split() for line in times.read_text().splitlines()) if int(line_seed) == seed}
        if 1 in arrivals and 1 in written:
            first.append(arrivals[1] - written[1])
        every += [arrivals[n] - written[n] for n in arrivals if n in written]
    return first, every
