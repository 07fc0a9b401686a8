"""Frozen records shared by every layer: the key of a run and what was recorded for it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

Source = Literal["new", "cache"]


@dataclass(frozen=True)
class RunKey:
    """What makes two runs the same run: scenario, seed and the engine's code."""

    scenario_id: str
    seed: int
    engine_code_hash: str

    @property
    def digest(self) -> str:
        """The cache key: sha256 of ``scenarioId:seed:engineCodeHash`` in hex."""
        material = f"{self.scenario_id}:{self.seed}:{self.engine_code_hash}"
        return hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunRecord:
    """One recorded run. Never changes once created, so it is shared without copying.

    ``events_json`` is the canonical JSON of the events list (compact, keys sorted,
    UTF-8): the bytes served to clients and the bytes ``events_sha256`` digests.
    """

    run_id: str
    cache_key: str
    scenario_id: str
    seed: int
    engine_code_hash: str
    engine_name: str
    engine_version: str
    created_at: int  # epoch milliseconds, the runId's suffix
    event_count: int
    events_sha256: str
    events_json: bytes


@dataclass(frozen=True)
class LiveRun:
    """A record as the registry holds it right now: with its expiry and hit count."""

    record: RunRecord
    expires_at: int  # epoch milliseconds
    hits: int


@dataclass(frozen=True)
class RegistryStats:
    """What a registry backend counts: its contents, and since its start, lookups and engine runs.

    With a shared backend these cover every process and host that uses it.
    """

    total_entries: int
    entries_by_scenario: dict[str, int]
    evictions: int
    expirations: int
    hits: int = 0  # lookups answered from a live entry
    misses: int = 0  # lookups that stored a new run
    engine_runs: int = 0
    engine_failures: int = 0
    engine_ms_total: float = 0.0


def canonical_json(value: object) -> bytes:
    """The contract's canonical JSON: compact, keys sorted, UTF-8 with non-ASCII kept.

    :raises ValueError: ``value`` holds something JSON cannot carry (NaN, infinity).
    :raises TypeError: ``value`` holds something that is not JSON at all.
    """
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
