"""Frozen records shared by every layer: the key of a run and what was recorded for it."""

from __future__ import annotations

import gzip
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

    @property
    def run_id_prefix(self) -> str:
        """``run_<scenarioId>_<seed>_``: a runId is this and its creation time."""
        return f"run_{self.scenario_id}_{self.seed}_"

    def run_id(self, created_at: int) -> str:
        """The runId of this key's run created at ``created_at`` (epoch milliseconds)."""
        return f"{self.run_id_prefix}{created_at}"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One recorded run. Never changes once created, so it is shared without copying.

    Small on purpose (a registry holds tens of thousands): the scenario, seed and creation
    time are read back from the runId (``run_<scenarioId>_<seed>_<createdAt>``), and the
    transcript is kept as the gzip of the whole ``/events`` JSON body
    (``{"runId":...,"events":[...],"count":N}``), about 1.2 KB instead of 9 KB for the default
    engine, and sent as it is to clients that accept gzip. The events part of that body is
    their canonical JSON (compact, keys sorted, UTF-8), the bytes ``events_sha256`` digests.
    """

    run_id: str
    cache_key: str
    engine_code_hash: str
    engine_name: str
    engine_version: str
    event_count: int
    events_digest: bytes  # sha256 of the events' canonical JSON
    body_gzip: bytes

    @classmethod
    def create(
        cls, *, key: RunKey, run_id: str, engine_name: str, engine_version: str, events_json: bytes,
        event_count: int,
    ) -> RunRecord:
        """The record of ``events_json`` (the canonical JSON of ``event_count`` events) for ``key``."""
        head, tail = _body_frame(run_id, event_count)
        return cls(
            run_id=run_id,
            cache_key=key.digest,
            engine_code_hash=key.engine_code_hash,
            engine_name=engine_name,
            engine_version=engine_version,
            event_count=event_count,
            events_digest=hashlib.sha256(events_json).digest(),
            # mtime=0: the same run compresses to the same bytes
            body_gzip=gzip.compress(head + events_json + tail, compresslevel=9, mtime=0),
        )

    @property
    def scenario_id(self) -> str:
        return self.run_id[4:].rsplit("_", 2)[0]  # a scenarioId may hold "_"; seed and time do not

    @property
    def seed(self) -> int:
        return int(self.run_id.rsplit("_", 2)[1])

    @property
    def created_at(self) -> int:
        """Epoch milliseconds, the runId's suffix."""
        return int(self.run_id.rsplit("_", 1)[1])

    @property
    def events_sha256(self) -> str:
        return self.events_digest.hex()

    def events_json(self, body: bytes) -> bytes:
        """The events' canonical JSON within this record's decompressed ``body``."""
        head, tail = _body_frame(self.run_id, self.event_count)
        return body[len(head):len(body) - len(tail)]


def run_description(record: RunRecord) -> dict[str, object]:
    """What never changes about a run, under the contract's names: the metadata endpoint adds
    its expiry and hits, the evidence pack its files' digests."""
    return {
        "runId": record.run_id,
        "scenarioId": record.scenario_id,
        "seed": record.seed,
        "engine": {"name": record.engine_name, "version": record.engine_version},
        "engineCodeHash": record.engine_code_hash,
        "cacheKey": record.cache_key,
        "createdAt": record.created_at,
        "count": record.event_count,
        "eventsSha256": record.events_sha256,
    }


def _body_frame(run_id: str, event_count: int) -> tuple[bytes, bytes]:
    """What surrounds the events in the /events body."""
    return b'{"runId":' + json.dumps(run_id).encode() + b',"events":', b',"count":%d}' % event_count


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
    entries_by_scenario: dict[str, int]  # the scenarios with most entries, most first (ties by name)
    scenario_count: int  # scenarios with live entries, listed or not
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
