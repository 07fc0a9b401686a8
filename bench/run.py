"""``make bench``: the service against its floor under wrk, and in-process measurements.

Starts the service under its own gunicorn.conf.py and, beside it on the same settings,
bench/floor.py (a bare Flask app answering with the service's recorded bytes). wrk loads
each on loopback in interleaved rounds; the table gives medians over the rounds and each
row's ratio to its floor measured in the same run. Then the in-process figures: memory per
cached run, lookup time against the number of entries, the longest sweep pause.

    python -m bench.run                 # the full run written up in docs/benchmarks.md
    python -m bench.run --smoke         # a few seconds, to keep this script from rotting
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from bench import engine_kinds
from bench import fleet
from bench import inprocess
from bench import live
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import RedisServer
from harness.servers import http
from harness.servers import require_binary

# Headers the floor repeats; the rest (Date, Content-Length, X-Request-ID...) are per response.
KEPT_HEADERS = ("Content-Type", "Content-Encoding", "Content-Disposition", "Cache-Control", "X-Accel-Buffering",
                 "X-Content-Type-Options", "Vary")
_NEW_KEYS_SCRIPT = """
local counter = 0
local offset = 0
function setup(thread) thread:set("offset", math.random(1, 1000000000) * 1000) end
function request()
  counter = counter + 1
  return wrk.format(nil, "/runs/lookup?scenarioId=bench-miss&seed=" .. (offset + counter))
end
"""


BENCH_KEYS = ",".join(f"bench-{index}:{hashlib.sha256(f'bench-secret-{index}'.encode()).hexdigest()}:read+run"
                      for index in range(3))
BENCH_KEY = {"Authorization": "Bearer bench-secret-2"}
# What `--smoke` runs of the table: each kind of row once, so that every way of measuring runs.
SMOKE_ROWS = ("lookup hit", "lookup miss (new runs)", "events JSON", "events JSON, 304 (If-None-Match)",
              "lookup hit, keys on", "lookup hit, Redis, 1 worker", "lookup hit, process engine")


@dataclass
class Row:
    name: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    script: str | None = None
    target: str = "memory"  # which service answers: memory, keyed (with keys), redis (one worker) or redis4 (four)
    floor_of: str | None = None  # the row whose service figure is this row's floor (Redis; keys on)
    floor_row: str | None = None  # the row whose floor figure is this row's floor (a 304: the full answer)
    peer_path: str | None = None  # the afternoon peer's path for the same request, if it has one
    results: dict[str, list[dict[str, float]]] = field(
        default_factory=lambda: {"service": [], "floor": [], "peer": []}
    )

    @property
    def has_own_floor(self) -> bool:
        return self.floor_of is None and self.floor_row is None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=100_000, help="cached runs for the memory figures")
    parser.add_argument("--smoke", action="store_true", help="one short round and small in-process figures")
    parser.add_argument("--markdown", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.runs = 1, 1, 500
    require_binary("wrk")
    require_binary("redis-server")

    with tempfile.TemporaryDirectory(prefix="run-registry-bench-") as scratch:
        parts = (load_test, compare_settings, measure_live, measure_fleet, measure_engine_kinds, measure_in_process)
        if args.smoke:  # its figures mean nothing, only that every part runs: all at once, on servers of their own
            with ThreadPoolExecutor(max_workers=len(parts)) as pool:
                table, settings, live_figures, fleet_figures, kind_figures, figures = (
                    future.result() for future in [pool.submit(part, Path(scratch), args) for part in parts])
        else:
            table, settings, live_figures, fleet_figures, kind_figures, figures = (
                part(Path(scratch), args) for part in parts)
        live_figures.update(fleet_figures)
        live_figures.update(kind_figures)
    report = render(table, settings, live_figures, figures, args)
    print(report)
    if args.markdown:
        write_report(args.markdown, report)


BEGIN, END = "<!-- bench.run: begin -->", "<!-- bench.run: end -->"


def write_report(path: Path, report: str) -> None:
    """Into ``path`` between its BEGIN and END markers (the prose around them stays), or as the
    whole file when it has none."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        report = f"{head}{BEGIN}\n{report}{END}{rest.split(END, 1)[1]}"
    path.write_text(report)


def measure_in_process(scratch: Path, args: argparse.Namespace) -> dict[str, str]:
    ledger_scratch = scratch / "ledger"
    ledger_scratch.mkdir()
    return inprocess.measure(args.runs, ledger_scratch, smoke=args.smoke)


def load_test(scratch: Path, args: argparse.Namespace) -> list[Row]:
    env = {"RUN_REGISTRY_TTL_MIN": "600"}
    with (
        contextlib.ExitStack() as optional,
        RedisServer(scratch) as redis_server,
        Gunicorn(scratch / "memory.log", env=env) as memory,
        Gunicorn(scratch / "redis.log", env={**env, "RUN_REGISTRY_URL": redis_server.url, "WEB_CONCURRENCY": "1"})
        as shared_one,
        Gunicorn(scratch / "peer.log", app="bench.peer:app", defaults=True) as peer,
        Gunicorn(scratch / "keyed.log", env={**env, "RUN_REGISTRY_API_KEYS": BENCH_KEYS}) as keyed,
        # The Node.js example engine: a hit must not care what kind of engine made the run.
        Gunicorn(scratch / "process.log", env={**env, "RUN_REGISTRY_ENGINE": f"command:{require_binary('node')}"
                                               f" {ROOT / 'examples' / 'engines' / 'process-engine.mjs'}"})
        as process,
    ):
        # Four Redis workers take the longest to start, for one row: not in the smoke run.
        shared = None if args.smoke else optional.enter_context(Gunicorn(
            scratch / "redis4.log", env={**env, "RUN_REGISTRY_URL": redis_server.url, "WEB_CONCURRENCY": "4"}))
        lookup = "/runs/lookup?scenarioId=pricing-v1&seed=42"
        run_id = http("GET", memory.url + lookup).json()["runId"]
        http("GET", shared_one.url + lookup)
        peer_run_id = http("GET", peer.url + lookup).json()["runId"]
        keyed_run_id = http("GET", keyed.url + lookup, headers=BENCH_KEY).json()["runId"]
        process_run_id = http("GET", process.url + lookup, timeout=30).json()["runId"]
        etag = http("GET", f"{memory.url}/runs/{run_id}/events").headers["ETag"]
        rows = [
            Row("lookup hit", lookup, peer_path=lookup),
            Row("lookup miss (new runs)", "/runs/lookup", script=_NEW_KEYS_SCRIPT),
            Row("events JSON", f"/runs/{run_id}/events", peer_path=f"/runs/{peer_run_id}/events"),
            Row("events JSON, gzip", f"/runs/{run_id}/events", headers={"Accept-Encoding": "gzip"}),
            Row("events JSON, 304 (If-None-Match)", f"/runs/{run_id}/events", headers={"If-None-Match": etag},
                floor_row="events JSON"),
            Row("events SSE (done run)", f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"}),
            Row("GET /runs/<runId>", f"/runs/{run_id}"),
            Row("CSV export", f"/runs/{run_id}/export.csv"),
            Row("snapshot ZIP", f"/runs/{run_id}/snapshot"),
            # With keys (three, one of them sent): the floor is the same request without keys.
            Row("lookup hit, keys on", lookup, headers=BENCH_KEY, target="keyed", floor_of="lookup hit"),
            Row("events JSON, keys on", f"/runs/{keyed_run_id}/events", headers=BENCH_KEY, target="keyed",
                floor_of="events JSON"),
            Row("lookup hit, Redis, 1 worker", lookup, target="redis", floor_of="lookup hit"),
            # A process engine's runs: the floor is the same request to the default (Python) engine's service.
            Row("lookup hit, process engine", lookup, target="process", floor_of="lookup hit"),
            Row("events JSON, process engine", f"/runs/{process_run_id}/events", target="process",
                floor_of="events JSON"),
            Row("lookup hit, Redis, 4 workers", lookup, target="redis4", floor_of="lookup hit"),
        ]
        if args.smoke:  # one row of each kind: the service's own floor, a peer, a script, a 304, Redis
            rows = [row for row in rows if row.name in SMOKE_ROWS]
        recorded = record_floor_responses(memory.url, run_id)
        floor_file = scratch / "floor.json"
        floor_file.write_text(json.dumps(recorded))
        floor_env = {**env, "BENCH_FLOOR_RESPONSES": str(floor_file), "PYTHONPATH": str(ROOT)}
        floor_server = Gunicorn(scratch / "floor.log", env=floor_env, app="bench.floor:app")
        with floor_server as floor:
            # Redis rows count redis-server's CPU too: a hit's cost is both processes' work.
            targets = {
                "memory": (memory, memory.cpu_seconds),
                "keyed": (keyed, keyed.cpu_seconds),
                "process": (process, process.cpu_seconds),
                "redis": (shared_one, lambda: shared_one.cpu_seconds() + redis_server.cpu_seconds()),
            }
            if shared is not None:
                targets["redis4"] = (shared, lambda: shared.cpu_seconds() + redis_server.cpu_seconds())
            for _ in range(args.rounds):  # interleaved: service, floor and peer alternate within each round
                for row in rows:
                    server, cpu = targets[row.target]
                    row.results["service"].append(wrk(server, row, args, cpu=cpu))
                    if row.has_own_floor:
                        row.results["floor"].append(wrk(floor, row, args))
                    if row.peer_path is not None:
                        row.results["peer"].append(wrk(peer, row, args, path=row.peer_path))
    return rows


# gunicorn worker classes for one process (the in-memory registry's condition), for lookup hits.
# GUNICORN_CMD_ARGS overrides gunicorn.conf.py; the service runs on threads where gevent is absent.
SETTINGS = {
    "gevent, 2000 connections (the default)": {},
    "gthread, 4 threads": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4"},
    "gthread, 64 threads": {"GUNICORN_CMD_ARGS": "--worker-class gthread --threads 64"},
    "sync (one request at a time)": {"GUNICORN_CMD_ARGS": "--worker-class sync"},
}


def measure_live(scratch: Path, args: argparse.Namespace) -> dict[str, str]:
    """The live-run figures: many streams of one run, slow and idle connections, event latency."""
    hits = Row("lookup hit", "/runs/lookup?scenarioId=pricing-v1&seed=42")
    wrk_args = argparse.Namespace(connections=args.connections, seconds=min(args.seconds, 2))

    def wrk_hits(server: Gunicorn) -> float:
        return wrk(server, hits, wrk_args)["rps"]

    clients, slow, idle = (20, 5, 5) if args.smoke else (500, 200, 200)
    figures = live.many_clients_on_one_live_run(scratch, clients, wrk_hits, delay_ms=2 if args.smoke else 50)
    figures.update(live.slow_and_idle_connections(scratch, slow, idle, probes=20 if args.smoke else 300,
                                                  settle_s=0.5 if args.smoke else 3))
    figures.update(live.event_latency(scratch, runs=1 if args.smoke else 3, delay_ms=2 if args.smoke else 10))
    return figures


def measure_engine_kinds(scratch: Path, args: argparse.Namespace) -> dict[str, str]:
    """A process engine against the command run by hand, and its events' way to a live client."""
    kinds_scratch = scratch / "kinds"
    kinds_scratch.mkdir()
    if args.smoke:
        return engine_kinds.measure(kinds_scratch, runs=2, latency_runs=1, delay_ms=2)
    return engine_kinds.measure(kinds_scratch)


def measure_fleet(scratch: Path, args: argparse.Namespace) -> dict[str, str]:
    """Queue execution: throughput by workers, time to the first live event, two web processes."""
    if args.smoke:
        return fleet.measure(scratch, (1, 2), runs=4, first_events=2, clients=10, delay_ms=2)
    return fleet.measure(scratch, (1, 2, 4), runs=16, first_events=30, clients=500, delay_ms=10)


def compare_settings(scratch: Path, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Lookup hits under each one-process setting, in interleaved rounds; medians."""
    row = Row("lookup hit", "/runs/lookup?scenarioId=pricing-v1&seed=42")
    settings = dict(list(SETTINGS.items())[:1]) if args.smoke else SETTINGS
    results: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, env in settings.items():
            with Gunicorn(scratch / "settings.log", env={"RUN_REGISTRY_TTL_MIN": "600", **env}) as server:
                http("GET", server.url + row.path)
                results[name].append(wrk(server, row, args))
    return {name: _median(runs) for name, runs in results.items()}


def record_floor_responses(url: str, run_id: str) -> dict[str, dict[str, object]]:
    """The service's own answers, for the floor to repeat byte for byte."""
    requests = {
        "lookup": ("/runs/lookup?scenarioId=pricing-v1&seed=42", {}),
        "metadata": (f"/runs/{run_id}", {}),
        "events": (f"/runs/{run_id}/events", {}),
        "events_gzip": (f"/runs/{run_id}/events", {"Accept-Encoding": "gzip"}),
        "sse": (f"/runs/{run_id}/events", {"Accept": "text/event-stream"}),
        "csv": (f"/runs/{run_id}/export.csv", {}),
        "snapshot": (f"/runs/{run_id}/snapshot", {}),
    }
    recorded = {}
    for name, (path, headers) in requests.items():
        reply = http("GET", url + path, headers=headers)
        assert reply.status == 200, (path, reply.status)
        kept = {key: value for key, value in reply.headers.items() if key in KEPT_HEADERS}
        recorded[name] = {"body": reply.body.hex(), "headers": kept}
    return recorded


def wrk(
    server: Gunicorn, row: Row, args: argparse.Namespace, cpu: Callable[[], float] | None = None,
    path: str | None = None,
) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles, and the server's CPU per request (``cpu``:
    the processes to count, by default the server's)."""
    cpu = cpu or server.cpu_seconds
    command = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds:g}s", "--latency"]
    for name, value in row.headers.items():
        command += ["-H", f"{name}: {value}"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(row.script or "")
    if row.script:
        command += ["-s", script.name]
    cpu_before = cpu()
    output = subprocess.run([*command, server.url + (path or row.path)], capture_output=True, text=True,
                            check=True).stdout
    cpu_used = cpu() - cpu_before
    os.unlink(script.name)
    requests = float(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{row.name}: {errors.group(1)} error responses\n{output}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": _latency_ms(output, "50%"),
        "p99": _latency_ms(output, "99%"),
        "cpu_us": cpu_used / requests * 1e6 if requests else 0.0,
    }


def _latency_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"{re.escape(percentile)}\s+([\d.]+)(us|ms|s)", output).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def render(
    rows: list[Row], settings: dict[str, dict[str, float]], live_figures: dict[str, str], figures: dict[str, object],
    args: argparse.Namespace,
) -> str:
    medians = {row.name: {side: _median(results) for side, results in row.results.items() if results}
               for row in rows}
    lines = [
        f"Run Registry benchmark: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s, wrk -t1 -c{args.connections}",
        f"Command: {' '.join(['python -m bench.run', *sys.argv[1:]])}",
        "",
        "| endpoint | requests/s | p50 ms | p99 ms | server CPU µs/request | floor requests/s | floor CPU µs/request "
        "| ratio to floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        service = medians[row.name]["service"]
        if row.floor_of:
            floor, floor_name = medians[row.floor_of]["service"], f"({row.floor_of}, memory)"
        elif row.floor_row:
            floor, floor_name = medians[row.floor_row]["floor"], f"({row.floor_row})"
        else:
            floor, floor_name = medians[row.name]["floor"], ""
        lines.append(
            f"| {row.name} | {service['rps']:.0f} | {service['p50']:.2f} | {service['p99']:.2f} "
            f"| {service['cpu_us']:.0f} | {floor['rps']:.0f} {floor_name}".rstrip()
            + f" | {floor['cpu_us']:.0f} | {service['rps'] / floor['rps']:.2f} |"
        )
    lines += [
        "", "Redis rows count the CPU of redis-server as well as gunicorn's. The afternoon peer (bench/peer.py: "
        "a dict under a lock, jsonify per request, `gunicorn bench.peer:app`, one sync worker), same run:", "",
        "| endpoint | service requests/s | peer requests/s | peer CPU µs/request | ratio to peer |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.peer_path is not None:
            service, peer = medians[row.name]["service"], medians[row.name]["peer"]
            lines.append(f"| {row.name} | {service['rps']:.0f} | {peer['rps']:.0f} | {peer['cpu_us']:.0f} "
                         f"| {service['rps'] / peer['rps']:.2f} |")
    redis_one, memory_hit = medians["lookup hit, Redis, 1 worker"]["service"], medians["lookup hit"]["service"]
    lines += ["", f"A Redis lookup hit costs {redis_one['cpu_us'] - memory_hit['cpu_us']:.0f} µs of CPU more than an "
              f"in-memory one ({redis_one['cpu_us']:.0f} against {memory_hit['cpu_us']:.0f}, one web worker each)."]
    lines += [
        "", "One-process gunicorn worker classes, lookup hit (the in-memory registry allows one process):", "",
        "| worker class | requests/s | p50 ms | p99 ms | server CPU µs/request |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {result['rps']:.0f} | {result['p50']:.2f} | {result['p99']:.2f} | {result['cpu_us']:.0f} |"
              for name, result in settings.items()]
    lines += ["", "Live runs and the fleet (one gevent web worker unless said):", ""]
    lines += [f"- {name}: {value}" for name, value in live_figures.items()]
    lines += ["", "In-process (one Python process, no HTTP):", ""]
    lines += [f"- {name}: {value}" for name, value in figures.items()]
    return "\n".join(lines) + "\n"


def _median(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(result[key] for result in results) for key in results[0]}


if __name__ == "__main__":
    main()
