"""In-process figures: memory per cached run and per ledger key, lookup time against entries, the
longest sweep pause, a compare of two large runs."""

from __future__ import annotations

import gc
import hashlib
import os
import statistics
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from app.access import open_caller
from app.clock import now_ms
from app.config import Settings
from app.engine.pricing import PricingEngine
from app.models import EncodedEvent
from app.models import RunIdentity
from app.models import RunKey
from app.models import RunRecord
from app.models import canonical_json
from app.registry.base import SWEEP_SLICE
from app.registry.memory import MemoryRegistry
from app.runs.service import RunService

CODE_HASH = "bench-code-hash"
BENCH = open_caller("bench")  # every scope: the service without keys
WAIT_S = 10.0


def measure(runs: int, scratch: Path, smoke: bool = False) -> dict[str, str]:
    """Every in-process figure, as text for the report."""
    figures = memory_per_run(runs)
    figures.update(ledger_bytes_per_key(500 if smoke else 100_000, scratch))
    figures.update(lookup_time_by_entries(10, min(runs, 100_000), repeats=3 if smoke else 9))
    figures.update(longest_sweep_pause(min(runs, 100_000)))
    figures.update(compare_of_large_runs(2_000 if smoke else 200_000))
    figures.update(listing_time_by_runs(100, 1_000 if smoke else 100_000, scratch, repeats=3 if smoke else 9))
    return figures


class _LargeRunEngine:
    """Runs of ``tokens`` tokens of 80 characters (200,000: a 27 MB transcript), differing only
    in their last token and their report."""

    name, version = "large-runs", "1"

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def run(self, scenario_id: str, seed: int):
        yield {"type": "start", "data": {"seed": seed}}
        for index in range(self.tokens):
            yield {"type": "token", "data": {"text": "x" * 80, "tokenIndex": index}}
        yield {"type": "token", "data": {"text": scenario_id}}
        yield {"type": "report", "data": {"level": len(scenario_id)}}
        yield {"type": "done", "data": {}}


def compare_of_large_runs(tokens: int, repeats: int = 10) -> dict[str, str]:
    """POST /compare of two done runs of ``tokens`` tokens each: the first compare of the pair (each
    run's facts made once) and the median of the next ones (the facts kept)."""
    from app.factory import create_app

    app = create_app(Settings(transcript_cache_mb=256, access_log=False), engine=_LargeRunEngine(tokens))
    client = app.test_client()
    body = {"left": {"scenarioId": "left", "seed": 1}, "right": {"scenarioId": "right-side", "seed": 1}}
    for side in ("left", "right-side"):
        client.get(f"/runs/lookup?scenarioId={side}&seed=1")
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        reply = client.post("/compare", json=body)
        times.append((time.perf_counter() - started) * 1000)
        assert reply.status_code == 200, reply.get_json()
    size = len(client.get(f"/runs/{reply.get_json()['left']['runId']}/events").data)
    return {
        f"POST /compare of two runs of {tokens:,} tokens ({size / 1e6:.1f} MB transcripts)":
        f"first {times[0]:.0f} ms (each run's facts made), then {statistics.median(times[1:]):.1f} ms"
        f" (median of {repeats}; every compare re-read both transcripts before: 2,196 ms for 200,000 tokens)",
    }


def _encoded_events(seed: int) -> list[EncodedEvent]:
    """The default engine's events for a seed, encoded as the service records them (in a pool worker)."""
    return [(event["type"], canonical_json(event["data"])) for event in PricingEngine().run("pricing-v1", seed)]


def _store_done_run(registry: MemoryRegistry, key: RunKey, events: list[EncodedEvent]) -> None:
    """Start, record and finish a run as the service's runner does."""
    started = registry.start(key, PricingEngine.name, PricingEngine.version, "bench")
    assert started.identity is not None
    registry.append(started.run_id, "bench", 1, events)
    registry.finish(started.run_id, "bench", RunRecord.create(started.identity, events))


def memory_per_run(runs: int) -> dict[str, str]:
    """Fill registries with ``runs`` runs of the default engine in all; what does each run cost?

    RSS: each core's process fills a registry of its own, running the engine in-process as
    the service does (moving runs between processes would fragment the heap and count that
    too), untraced (tracemalloc's own bookkeeping would count as well). tracemalloc: the
    bytes Python allocates for the records, made here from runs the workers made.
    """
    workers = os.cpu_count() or 1
    shares = [runs // workers + (index < runs % workers) for index in range(workers)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rss = sum(pool.map(_rss_growth_of_runs, shares, [sum(shares[:i]) for i in range(workers)]))
    elapsed = time.perf_counter() - started
    traced = _traced_bytes_of_runs(runs)
    return {
        "cached runs of the default engine (pricing-v1, seeds 0..)": f"{runs:,} (made in {elapsed:.0f} s)",
        "memory per cached run, RSS growth": f"{rss / runs:,.0f} bytes ({rss / 2**20:,.1f} MiB in all)",
        "memory per cached run, tracemalloc": f"{traced / runs:,.0f} bytes",
    }


def _rss_growth_of_runs(runs: int, first_seed: int) -> int:
    """In a pool worker: RSS growth from caching ``runs`` runs made by the service itself."""
    registry = MemoryRegistry(ttl_ms=3_600_000, max_entries=runs)
    service = RunService(registry, PricingEngine(), Settings(new_runs_per_minute=0, engine_code_hash=CODE_HASH))
    service.lookup("pricing-v1", -1, BENCH, WAIT_S)  # warm every code path before measuring
    gc.collect()
    before = _rss_bytes()
    for seed in range(first_seed, first_seed + runs):
        service.lookup("pricing-v1", seed, BENCH, WAIT_S)
    gc.collect()
    return _rss_bytes() - before


def _traced_bytes_of_runs(runs: int) -> int:
    """Bytes tracemalloc counts for ``runs`` cached runs (the engine runs in pool workers)."""
    registry = MemoryRegistry(ttl_ms=3_600_000, max_entries=runs)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(abs, range(8)))  # start the workers first: forked while tracing, they would trace too
        gc.collect()
        tracemalloc.start()
        for seed, events in enumerate(pool.map(_encoded_events, range(runs), chunksize=256)):
            _store_done_run(registry, RunKey("pricing-v1", seed, CODE_HASH), events)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert registry.stats(top_scenarios=0).total_entries == runs
    return traced


def lookup_time_by_entries(few: int, many: int, repeats: int) -> dict[str, str]:
    """A lookup hit's time in the service, with ``few`` and with ``many`` entries in the registry."""
    timings = {}
    for entries in (few, many):
        registry = MemoryRegistry(ttl_ms=3_600_000, max_entries=many)
        settings = Settings(new_runs_per_minute=0, engine_code_hash=CODE_HASH)
        service = RunService(registry, PricingEngine(), settings)
        for seed in range(entries):
            key = RunKey("bench-entries", seed, CODE_HASH)
            _store_done_run(registry, key, [])
        batches = []
        for _ in range(repeats):
            started = time.perf_counter()
            for seed in range(0, 10_000):
                service.lookup("bench-entries", seed % few, BENCH, WAIT_S)
            batches.append((time.perf_counter() - started) / 10_000)
        timings[entries] = statistics.median(batches)
    return {
        f"lookup hit in the service, {few} entries": f"{timings[few] * 1e6:.2f} µs",
        f"lookup hit in the service, {many:,} entries": f"{timings[many] * 1e6:.2f} µs"
        f" (throughput {timings[few] / timings[many]:.2f} of the {few}-entry figure)",
    }


def listing_time_by_runs(few: int, many: int, scratch: Path, repeats: int) -> dict[str, str]:
    """A page of GET /runs (20 runs, the first and one deep in the listing) in the registry, with
    ``few`` and with ``many`` done runs held, in memory and on Redis: a page's cost is the page's."""
    from app.registry.redis_registry import RedisRegistry
    from harness.servers import RedisServer

    def median_page_us(registry: Any, runs: int) -> float:
        for seed in range(runs):
            _store_done_run(registry, RunKey("bench-listing", seed, CODE_HASH), [])
        deep = registry.runs(20, None)
        for _ in range(runs // 40):  # halfway down
            deep = registry.runs(20, deep.next)
        batches = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(100):
                registry.runs(20, None)
                registry.runs(20, deep.next)
            batches.append((time.perf_counter() - started) / 200)
        return statistics.median(batches) * 1e6

    figures = {}
    for backend in ("memory", "Redis"):
        timings = {}
        for runs in (few, many):
            if backend == "memory":
                timings[runs] = median_page_us(MemoryRegistry(ttl_ms=3_600_000, max_entries=many), runs)
                continue
            with RedisServer(scratch) as server:
                registry = RedisRegistry(server.url, ttl_ms=3_600_000, max_entries=many, lease_ms=3_600_000)
                timings[runs] = median_page_us(registry, runs)
                registry.close()
        figures[f"a page of 20 runs, {backend}, {few:,} and {many:,} runs held"] = (
            f"{timings[few]:.0f} µs and {timings[many]:.0f} µs ({timings[many] / timings[few]:.2f}x)")
    return figures


def longest_sweep_pause(entries: int) -> dict[str, str]:
    """Expire ``entries`` entries at once, then time every slice of the sweep that removes them.

    A slice runs with the registry's lock held, so the longest slice is the longest any
    lookup waits on a sweep.
    """
    ttl_ms = 3_600_000
    registry = MemoryRegistry(ttl_ms=ttl_ms, max_entries=entries)
    for seed in range(entries):
        key = RunKey("bench-sweep", seed, CODE_HASH)
        _store_done_run(registry, key, [])
    later = now_ms() + ttl_ms  # an hour on: every entry has expired
    pauses = []
    while True:
        started = time.perf_counter()
        removed = registry.sweep_expired(later, SWEEP_SLICE)
        pauses.append(time.perf_counter() - started)
        if removed < SWEEP_SLICE:
            break
    assert registry.held_entries() == 0
    return {
        f"sweep of {entries:,} expired entries": f"{len(pauses):,} slices of {SWEEP_SLICE}; longest lock hold "
        f"{max(pauses) * 1000:.3f} ms, median {statistics.median(pauses) * 1000:.3f} ms, all "
        f"{sum(pauses) * 1000:.0f} ms",
    }


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def ledger_bytes_per_key(keys: int, scratch: Path) -> dict[str, str]:
    """What one key of the determinism ledger costs once its runs are gone: in memory
    (tracemalloc: the entry, its runId, digest and cache key), and in Redis (used_memory's growth:
    the key's hash, its place in the sorted set of last checks)."""
    from app.registry.redis_registry import RedisRegistry
    from harness.servers import RedisServer

    registry = MemoryRegistry(ttl_ms=3_600_000, max_entries=10, ledger_keys=keys)
    gc.collect()
    tracemalloc.start()
    for index in range(keys):  # each record made and dropped: what stays is what the ledger keeps
        record = _record_without_transcript(index)
        registry.check_reproduction(record, record.events_digest)
    del record
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    records = [_record_without_transcript(index) for index in range(keys)]
    with RedisServer(scratch) as server:
        shared = RedisRegistry(server.url, ttl_ms=3_600_000, max_entries=10, ledger_keys=keys)
        shared.check_reproduction(records[0], records[0].events_digest)  # scripts loaded, structures made
        client = server.client()
        before = client.info("memory")["used_memory"]
        for record in records[1:]:
            shared.check_reproduction(record, record.events_digest)
        grown = client.info("memory")["used_memory"] - before
        shared.close()
    return {
        "memory per determinism ledger key, tracemalloc": f"{traced / keys:,.0f} bytes ({keys:,} keys)",
        "Redis memory per determinism ledger key, used_memory": f"{grown / (keys - 1):,.0f} bytes ({keys:,} keys)",
    }


def _record_without_transcript(index: int) -> RunRecord:
    """A done run's record as the ledger sees it: identity and digest (its transcript is not kept there)."""
    key = RunKey("pricing-v1", index, CODE_HASH)
    identity = RunIdentity.of(key, key.run_id(1_795_694_400_000), PricingEngine.name, PricingEngine.version)
    return RunRecord(identity, 147, hashlib.sha256(b"%d" % index).digest(), b"")
