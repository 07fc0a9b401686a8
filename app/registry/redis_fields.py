"""What the Redis registry's scripts answer, read back as the registry's models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.models import ENGINE_DURATION_BUCKETS_S
from app.models import Divergence
from app.models import LedgerCheck
from app.models import LedgerEntry
from app.models import RegistryStats
from app.models import RunError
from app.models import RunIdentity
from app.models import RunRecord
from app.models import RunState
from app.models import run_created_at


def run_state(fields: dict[str, Any]) -> RunState:
    """A run hash's fields as a RunState. :raises: anything, when a field is missing or unreadable."""
    identity = RunIdentity(
        run_id=fields["runId"].decode(),
        cache_key=fields["cacheKey"].decode(),
        engine_code_hash=fields["engineCodeHash"].decode(),
        engine_name=fields["engineName"].decode(),
        engine_version=fields["engineVersion"].decode(),
    )
    status = fields["status"].decode()
    count, hits = int(fields["count"]), int(fields["hits"])
    if status == "done":
        record = RunRecord(identity, count, bytes(fields["eventsDigest"]), bytes(fields["bodyGzip"]))
        return RunState(identity, "done", count, hits, record=record, expires_at=int(fields["expiresAt"]))
    if status == "failed":
        error = RunError(fields["errorType"].decode(), fields["errorMessage"].decode())
        return RunState(identity, "failed", count, hits, error=error)
    if status == "running":
        return RunState(identity, "running", count, hits)
    raise ValueError(f"unknown status {status!r}")


def ledger_entry(fields: Sequence[Any]) -> LedgerEntry:
    """A ledger hash's r, d, n, x fields. :raises ValueError, IndexError, UnicodeDecodeError: they are not an entry."""
    run_id = fields[0].decode()
    if len(fields[1]) != 32 or run_created_at(run_id) <= 0:  # a digest, and a runId it can read
        raise ValueError(run_id)
    return LedgerEntry(run_id, bytes(fields[1]), int(fields[2] or 0), int(fields[3] or 0))


def registry_stats(
    done: Any, running: Any, top: list[bytes], scenario_count: Any, counters: list[bytes]
) -> RegistryStats:
    """stats.lua's answer: entries done and running, the top scenarios, how many there are, the counters."""
    counts = {name.decode(): float(value) for name, value in pairs(counters)}
    return RegistryStats(
        total_entries=int(done) + int(running),
        entries_by_scenario={name.decode(): -int(float(score)) for name, score in pairs(top)},
        scenario_count=int(scenario_count),
        evictions=int(counts.get("evictions", 0)),
        expirations=int(counts.get("expirations", 0)),
        hits=int(counts.get("hits", 0)),
        misses=int(counts.get("misses", 0)),
        running=int(running),
        engine_runs=int(counts.get("engine_runs", 0)),
        engine_failures=int(counts.get("engine_failures", 0)),
        engine_ms_total=counts.get("engine_ms_total", 0.0),
        engine_durations=durations(counts),
    )


def ledger_check(answer: list[Any]) -> LedgerCheck:
    """ledger_check's answer: {result, runId, digest, checks, divergences}."""
    entry = LedgerEntry(answer[1].decode(), bytes(answer[2]), int(answer[3]), int(answer[4]))
    return LedgerCheck(answer[0].decode(), entry)


def divergence(listed: bytes) -> Divergence:
    """A divergence as ledger_check lists it: both digests (64 bytes), then at, cacheKey,
    engineCodeHash, reference runId, runId on lines of their own."""
    reference, diverging, rest = listed[:32], listed[32:64], listed[64:].decode()
    at, cache_key, code_hash, reference_run_id, run_id = rest.split("\n")
    return Divergence(cache_key, code_hash, reference_run_id, reference.hex(), run_id, diverging.hex(), int(at))


def durations(counts: dict[str, float]) -> dict[str, tuple[tuple[int, ...], float]]:
    """The engine duration buckets kept in the counters hash (``duration:<outcome>:<index>``)."""
    durations = {}
    for outcome in ("succeeded", "failed"):
        buckets = tuple(int(counts.get(f"duration:{outcome}:{index}", 0))
                        for index in range(len(ENGINE_DURATION_BUCKETS_S) + 1))
        if any(buckets):
            durations[outcome] = (buckets, counts.get(f"duration_sum:{outcome}", 0.0))
    return durations


def stream_ending(fields: dict[bytes, bytes]) -> str | RunError:
    if fields[b"end"] == b"done":
        return "done"
    return RunError(fields.get(b"et", b"ENGINE_ERROR").decode(), fields.get(b"em", b"").decode())


def pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    """HGETALL's flat [name, value, ...] as pairs."""
    return list(zip(flat[::2], flat[1::2], strict=True))
