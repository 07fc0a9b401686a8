"""Live runs under load: many clients on one live run, slow and idle connections, event latency.

Clients are asyncio sockets in this process, so hundreds of them cost the machine little
beside the server they load; requests are HTTP/1.0, so a stream ends with its connection.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

from harness.servers import Gunicorn
from harness.servers import RedisServer
from harness.servers import http
from harness.servers import http10_get

KEEPALIVE = b": keepalive\n\n"


def _note_arrival(arrivals: dict[int, float], line: bytes, when: float) -> None:
    if line.startswith(b"id: "):
        arrivals[int(line[4:])] = when


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def many_clients_on_one_live_run(scratch: Path, clients: int, wrk_hits, delay_ms: int = 50) -> dict[str, str]:
    """``clients`` live streams of one run at once; every one must be the replay, byte for byte.

    Also the server's memory per stream (RSS with the streams open, less before), and lookup
    hits while they stream against hits on the idle server (``wrk_hits(server)`` gives hits/s).
    """
    # The clients of this one machine stand for as many hosts: one client's share is all of it.
    env = {"RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": str(delay_ms), "RUN_REGISTRY_MAX_WAITING": str(clients + 100),
           "RUN_REGISTRY_MAX_WAITING_PER_CLIENT": str(clients + 99),
           "GUNICORN_WORKER_CONNECTIONS": str(clients + 500), "RUN_REGISTRY_ACCESS_LOG": "off"}
    with Gunicorn(scratch / "live-clients.log", env=env) as server:
        http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42", timeout=30)
        idle_hits = wrk_hits(server)
        rss_before = server.rss_bytes()
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=4242",
                      headers={"Prefer": "respond-async"}).json()["runId"]

        async def watch() -> tuple[list[bytes], int, float]:
            connected = asyncio.Event()
            opened = 0

            def first_bytes() -> None:
                nonlocal opened
                opened += 1
                if opened == clients:
                    connected.set()

            streams = [asyncio.create_task(http10_get(server.port, f"/runs/{run_id}/events",
                                                {"Accept": "text/event-stream"}, on_first=first_bytes))
                       for _ in range(clients)]
            await asyncio.wait_for(connected.wait(), timeout=60)
            rss_with = server.rss_bytes()
            busy_hits = await asyncio.to_thread(wrk_hits, server)
            bodies = await asyncio.gather(*streams)
            return bodies, rss_with, busy_hits

        bodies, rss_with, busy_hits = asyncio.run(watch())
        replay = asyncio.run(http10_get(server.port, f"/runs/{run_id}/events", {"Accept": "text/event-stream"}))
    identical = sum(body.replace(KEEPALIVE, b"") == replay for body in bodies)
    events = replay.count(b"\nevent: ")
    return {
        f"{clients} live streams of one run (147 events, {delay_ms} ms apart)":
            f"{identical} of {len(bodies)} byte-identical to the replay, {events} events each",
        "server memory per live stream": f"{(rss_with - rss_before) / clients / 1024:,.1f} KiB"
                                         f" (RSS {rss_before / 2**20:,.1f} MiB idle, {rss_with / 2**20:,.1f} MiB"
                                         f" with the {clients} streams open)",
        "lookup hits while they stream": f"{busy_hits:,.0f}/s against {idle_hits:,.0f}/s idle"
                                         f" ({busy_hits / idle_hits:.2f}x)",
    }


def slow_and_idle_connections(
    scratch: Path, slow: int, idle: int, probes: int = 300, settle_s: float = 3
) -> dict[str, str]:
    """``/healthz`` latency with ``slow`` clients trickling a request a byte a second and ``idle``
    ones connected and silent (both reconnecting whenever the server closes them)."""
    with Gunicorn(scratch / "slow-idle.log", env={"RUN_REGISTRY_ACCESS_LOG": "off"}) as server:
        quiet = asyncio.run(_healthz_latencies(server.port, probes))

        async def loaded() -> list[float]:
            stop = asyncio.Event()
            holders = [asyncio.create_task(_hold(server.port, stop, trickle=index < slow))
                       for index in range(slow + idle)]
            await asyncio.sleep(settle_s)  # all connected, the slow ones mid-request
            latencies = await _healthz_latencies(server.port, probes)
            stop.set()
            await asyncio.gather(*holders, return_exceptions=True)
            return latencies

        busy = asyncio.run(loaded())
    return {
        f"/healthz with {slow} slow and {idle} idle connections": f"p50 {percentile(busy, 0.5) * 1000:.1f} ms,"
        f" p99 {percentile(busy, 0.99) * 1000:.1f} ms, max {max(busy) * 1000:.1f} ms over {probes} requests"
        f" (without them: p50 {percentile(quiet, 0.5) * 1000:.1f} ms, p99 {percentile(quiet, 0.99) * 1000:.1f} ms)",
    }


async def _hold(port: int, stop: asyncio.Event, trickle: bool) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        sent = 0
        while not stop.is_set() and not reader.at_eof():
            if trickle and sent < len(request) - 1:  # never the last byte: the request never completes
                writer.write(request[sent:sent + 1])
                sent += 1
            try:
                await asyncio.wait_for(reader.read(1024), timeout=1.0)
            except TimeoutError:
                continue
            except OSError:
                break
        writer.close()


async def _healthz_latencies(port: int, probes: int) -> list[float]:
    latencies = []
    for _ in range(probes):
        started = time.perf_counter()
        body = await asyncio.wait_for(http10_get(port, "/healthz", {}), timeout=10)
        latencies.append(time.perf_counter() - started)
        assert b'"ok"' in body
    return latencies


def event_latency(scratch: Path, runs: int = 3, delay_ms: int = 10) -> dict[str, str]:
    """From an event's creation in the engine to its arrival at a live client: in memory (one
    process), and on Redis with the client on another web process than the one executing."""
    figures = {}
    times_file = scratch / "event-times"
    env = {"RUN_REGISTRY_ENGINE": "bench.engines:TimestampingEngine", "BENCH_EVENT_TIMES": str(times_file),
           "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": str(delay_ms), "RUN_REGISTRY_ACCESS_LOG": "off"}
    with Gunicorn(scratch / "latency-memory.log", env=env) as server:
        figures["memory"] = _latencies(server, server, times_file, runs, "memory")
    with RedisServer(scratch) as redis_server:
        shared = {**env, "RUN_REGISTRY_URL": redis_server.url, "WEB_CONCURRENCY": "1"}
        with (Gunicorn(scratch / "latency-a.log", env=shared) as executor,
              Gunicorn(scratch / "latency-b.log", env=shared) as watcher):
            figures["redis"] = _latencies(executor, watcher, times_file, runs, "redis")
    return {
        f"event creation to a live client, {where}": f"p50 {percentile(values, 0.5) * 1000:.2f} ms,"
        f" p99 {percentile(values, 0.99) * 1000:.2f} ms over {len(values)} events"
        + (" (client on another web process than the executor)" if where == "redis" else "")
        for where, values in figures.items()
    }


def _latencies(starter: Gunicorn, watcher: Gunicorn, times_file: Path, runs: int, label: str) -> list[float]:
    latencies: list[float] = []
    for index in range(runs):
        seed = 9000 + index
        scenario = f"latency-{label}"
        run_id = http("GET", f"{starter.url}/runs/lookup?scenarioId={scenario}&seed={seed}",
                      headers={"Prefer": "respond-async"}).json()["runId"]
        arrivals: dict[int, float] = {}
        asyncio.run(http10_get(watcher.port, f"/runs/{run_id}/events", {"Accept": "text/event-stream"},
                         functools.partial(_note_arrival, arrivals)))
        created = {}
        for line in times_file.read_text().splitlines():
            name, line_seed, position, when = line.split()
            if name == scenario and int(line_seed) == seed:
                created[int(position)] = float(when)
        # The first events were made before the client connected: count those it saw live.
        latencies += [arrivals[position] - created[position] for position in arrivals
                      if position in created and position > 5]
    return latencies
