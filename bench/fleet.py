"""The fleet under load (queue execution on Redis, processes from the Procfile's lines): new-run
throughput by number of workers, time to the first live event across web processes, and many
live clients over two web processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.live import KEEPALIVE
from bench.live import percentile
from harness.servers import ProcfileProcess
from harness.servers import RedisServer
from harness.servers import http
from harness.servers import http10_get


class _Fleet:
    def __init__(self, scratch: Path, redis_url: str, clients: int, delay_ms: int) -> None:
        self.scratch = scratch
        self.delay_ms = delay_ms  # the default engine paced like a real one: waiting, not computing
        self.env = {"RUN_REGISTRY_URL": redis_url, "RUN_REGISTRY_EXECUTION": "queue", "WEB_CONCURRENCY": "1",
                    "RUN_REGISTRY_ACCESS_LOG": "off", "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": str(delay_ms),
                    "RUN_REGISTRY_MAX_WAITING": str(clients + 100),
                    "RUN_REGISTRY_MAX_WAITING_PER_CLIENT": str(clients + 99),  # one machine, many clients
                    "GUNICORN_WORKER_CONNECTIONS": str(clients + 600)}
        self.workers: list[ProcfileProcess] = []
        self.webs = [ProcfileProcess("web", scratch / f"fleet-web-{index}.log", self.env).start() for index in (0, 1)]

    def add_workers(self, total: int) -> None:
        while len(self.workers) < total:
            index = len(self.workers)
            self.workers.append(ProcfileProcess("worker", self.scratch / f"fleet-worker-{index}.log", self.env).start())

    def stop(self) -> None:
        for process in [*self.webs, *self.workers]:
            process.stop()


@contextlib.contextmanager
def _fleet(scratch: Path, clients: int, delay_ms: int) -> Iterator[_Fleet]:
    with RedisServer(scratch) as redis_server:
        fleet = _Fleet(scratch, redis_server.url, clients, delay_ms)
        try:
            yield fleet
        finally:
            fleet.stop()


def measure(scratch: Path, worker_counts: tuple[int, ...], runs: int, first_events: int,
            clients: int, delay_ms: int) -> dict[str, str]:
    with _fleet(scratch, clients, delay_ms) as fleet:
        figures = _throughput_by_workers(fleet, worker_counts, runs)
        figures.update(_first_live_event(fleet, first_events))
        figures.update(_clients_over_two_web_processes(fleet, clients))
    return figures


def _throughput_by_workers(fleet: _Fleet, counts: tuple[int, ...], runs: int) -> dict[str, str]:
    """``runs`` new runs started at once; runs done a second with each number of workers."""
    web = fleet.webs[0]
    rates: dict[int, float] = {}
    for workers in counts:
        fleet.add_workers(workers)
        started = time.monotonic()
        run_ids = [http("GET", f"{web.url}/runs/lookup?scenarioId=throughput-{workers}&seed={seed}",
                        headers={"Prefer": "respond-async"}).json()["runId"] for seed in range(runs)]
        with ThreadPoolExecutor(max_workers=runs) as pool:
            list(pool.map(lambda run_id: _wait_done(web.url, run_id), run_ids))
        rates[workers] = runs / (time.monotonic() - started)
    one = rates[counts[0]]
    return {
        f"new runs a second, {workers} worker{'s' if workers > 1 else ''} ({runs} runs of 147 events"
        f" {fleet.delay_ms} ms apart)": f"{rate:.2f} ({rate / one:.2f}x {counts[0]} worker)"
        for workers, rate in rates.items()
    }


def _wait_done(url: str, run_id: str) -> None:
    while http("GET", f"{url}/runs/{run_id}/events", headers={"Prefer": "wait=25"}, timeout=60).status == 202:
        pass


def _first_live_event(fleet: _Fleet, runs: int) -> dict[str, str]:
    """From a lookup that starts a run on one web process to its first event at a live client of
    the other, the run executed by a worker (the engine's first pause included)."""
    starter, watcher = fleet.webs
    latencies = []
    for seed in range(runs):
        arrived: list[float] = []

        def first(line: bytes, when: float, arrived: list[float] = arrived) -> None:
            if line.startswith(b"id: 1\n") and not arrived:
                arrived.append(when)

        began = time.time()
        run_id = http("GET", f"{starter.url}/runs/lookup?scenarioId=first-event&seed={seed}",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        asyncio.run(http10_get(watcher.port, f"/runs/{run_id}/events", {"Accept": "text/event-stream"}, first))
        latencies.append(arrived[0] - began)
    return {
        "lookup to the first live event, at a client of another web process (queue execution)":
            f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
            f" over {runs} runs ({fleet.delay_ms} ms of it the engine's pause before its first event)",
    }


def _clients_over_two_web_processes(fleet: _Fleet, clients: int) -> dict[str, str]:
    """``clients`` live streams of one run, half on each web process, the run on a worker."""
    first, second = fleet.webs
    run_id = http("GET", f"{first.url}/runs/lookup?scenarioId=two-webs&seed=1",
                  headers={"Prefer": "respond-async"}).json()["runId"]

    async def watch() -> list[bytes]:
        return await asyncio.gather(*(
            http10_get((first if index % 2 else second).port, f"/runs/{run_id}/events", {"Accept": "text/event-stream"})
            for index in range(clients)))

    bodies = asyncio.run(watch())
    replay = asyncio.run(http10_get(first.port, f"/runs/{run_id}/events", {"Accept": "text/event-stream"}))
    identical = sum(body.replace(KEEPALIVE, b"") == replay for body in bodies)
    # A stream the service refused answers a JSON error (503 when overloaded), not an event stream.
    refused = Counter(json.loads(body)["type"] for body in bodies if body.startswith(b'{"type"'))
    said = "".join(f", {count} refused {kind}" for kind, count in sorted(refused.items()))
    return {
        f"{clients} live streams of one run over two web processes (the run on a worker)":
            f"{identical} of {len(bodies)} byte-identical to the replay{said}, {replay.count(b'event: ')} events each",
    }
