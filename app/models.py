"""Frozen records shared by every layer: the key of a run, what it is, and what it recorded."""

from __future__ import annotations

import bisect
import functools
import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Literal

Source = Literal["new", "cache"]
RunStatus = Literal["running", "done", "failed"]
# One recorded event as it is stored: its type and the canonical JSON of its data. Both the
# events JSON and the SSE frames are made of these bytes, so a live stream and a replay match.
EncodedEvent = tuple[str, bytes]


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


@functools.lru_cache(maxsize=65_536)
def cache_key(key: RunKey) -> str:
    """``key.digest``, memoised: lookup hits ask for the same few keys over and over."""
    return key.digest


def run_scenario_id(run_id: str) -> str:
    """The scenarioId of ``run_<scenarioId>_<seed>_<createdAt>`` (it may hold "_"; seed and time do not)."""
    return run_id[4:].rsplit("_", 2)[0]


def run_seed(run_id: str) -> int:
    return int(run_id.rsplit("_", 2)[1])


def run_created_at(run_id: str) -> int:
    """Epoch milliseconds, the runId's suffix."""
    return int(run_id.rsplit("_", 1)[1])


class NamedByRunId:
    """What a run's runId says of it (``run_<scenarioId>_<seed>_<createdAt>``), for the records
    that carry one."""

    __slots__ = ()
    run_id: str

    @property
    def scenario_id(self) -> str:
        return run_scenario_id(self.run_id)

    @property
    def seed(self) -> int:
        return run_seed(self.run_id)

    @property
    def created_at(self) -> int:
        """Epoch milliseconds, the runId's suffix."""
        return run_created_at(self.run_id)


@dataclass(frozen=True, slots=True)
class RunIdentity(NamedByRunId):
    """Which run this is and which engine code makes it: known from the moment it starts.

    The scenario, seed and creation time are read back from the runId
    (``run_<scenarioId>_<seed>_<createdAt>``).
    """

    run_id: str
    cache_key: str
    engine_code_hash: str
    engine_name: str
    engine_version: str

    @classmethod
    def of(cls, key: RunKey, run_id: str, engine_name: str, engine_version: str) -> RunIdentity:
        return cls(run_id, key.digest, key.engine_code_hash, engine_name, engine_version)

    @property
    def key(self) -> RunKey:
        return RunKey(self.scenario_id, self.seed, self.engine_code_hash)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A done run's transcript. Never changes once made, so it is shared without copying.

    Small on purpose (a registry holds tens of thousands): the transcript is kept as the gzip
    of the whole ``/events`` JSON body (``{"runId":...,"events":[...],"count":N}``), about
    1.2 KB instead of 9 KB for the default engine, and sent as it is to clients that accept
    gzip. The events part of that body is their canonical JSON (compact, keys sorted,
    UTF-8), the bytes ``events_sha256`` digests.
    """

    identity: RunIdentity
    event_count: int
    events_digest: bytes  # sha256 of the events' canonical JSON
    body_gzip: bytes

    @classmethod
    def create(cls, identity: RunIdentity, events: Sequence[EncodedEvent]) -> RunRecord:
        """The record of ``events`` for the run ``identity`` names."""
        events_json = encode_events(events)
        head, tail = _body_frame(identity.run_id, len(events))
        return cls(
            identity=identity,
            event_count=len(events),
            events_digest=hashlib.sha256(events_json).digest(),
            # mtime=0: the same run compresses to the same bytes
            body_gzip=gzip.compress(head + events_json + tail, compresslevel=9, mtime=0),
        )

    @property
    def run_id(self) -> str:
        return self.identity.run_id

    @property
    def events_sha256(self) -> str:
        return self.events_digest.hex()

    def events_json(self, body: bytes) -> bytes:
        """The events' canonical JSON within this record's decompressed ``body``."""
        head, tail = _body_frame(self.run_id, self.event_count)
        if not body.endswith(b"\n"):  # recorded by a version whose bodies ended without one
            tail = tail[:-1]
        return body[len(head):len(body) - len(tail)]


@dataclass(frozen=True, slots=True)
class RunError:
    """Why a run failed, as its metadata and its live clients are told."""

    type: str
    message: str


@dataclass(frozen=True)
class RunState:
    """A run as the registry holds it right now.

    ``record``, ``expires_at`` are set once it is done (its TTL starts then), ``error`` once it
    failed; ``count`` is the events recorded so far.
    """

    identity: RunIdentity
    status: RunStatus
    count: int
    hits: int = 0
    record: RunRecord | None = None
    expires_at: int | None = None  # epoch milliseconds
    error: RunError | None = None


@dataclass(frozen=True)
class RunRef:
    """What a lookup hit learns: the runId and whether the run is done."""

    run_id: str
    status: RunStatus


@dataclass(frozen=True, slots=True)
class ListedRun(NamedByRunId):
    """A run as ``GET /runs`` lists it: its scenario, seed and creation time are its runId's."""

    run_id: str
    status: RunStatus
    determinism: LedgerEntry | None = None  # a done run's key in the ledger (None: forgotten, or not done)


@dataclass(frozen=True)
class RunPage:
    """A page of runs, newest first, and the runId to go on from (``None``: no older run)."""

    runs: list[ListedRun]
    next: str | None


def listing_order(run_id: str) -> tuple[int, str]:
    """Where a run sits in the listing: by creation time, then runId (runs of one millisecond)."""
    return run_created_at(run_id), run_id


def run_description(identity: RunIdentity) -> dict[str, object]:
    """What never changes about a run, under the contract's names: the metadata endpoint adds
    its status and counts, the evidence pack its files' digests."""
    return {
        "runId": identity.run_id,
        "scenarioId": identity.scenario_id,
        "seed": identity.seed,
        "engine": {"name": identity.engine_name, "version": identity.engine_version},
        "engineCodeHash": identity.engine_code_hash,
        "cacheKey": identity.cache_key,
        "createdAt": identity.created_at,
    }


def record_description(record: RunRecord) -> dict[str, object]:
    """A done run's description: what never changes about it, with its transcript's count and digest."""
    return {**run_description(record.identity), "count": record.event_count, "eventsSha256": record.events_sha256}


def _body_frame(run_id: str, event_count: int) -> tuple[bytes, bytes]:
    """What surrounds the events in the /events body (which ends with a newline, as every JSON
    body does, so that a terminal's prompt does not run into it)."""
    return b'{"runId":' + json.dumps(run_id).encode() + b',"events":', b',"count":%d}\n' % event_count


def encode_event(event_type: str, data_json: bytes) -> bytes:
    """One event's canonical JSON (keys sorted: "data" before "type"); types need no escaping."""
    return b'{"data":' + data_json + b',"type":"' + event_type.encode() + b'"}'


def encode_events(events: Sequence[EncodedEvent]) -> bytes:
    """The canonical JSON of a list of events: what ``eventsSha256`` digests."""
    return b"[" + b",".join(encode_event(event_type, data) for event_type, data in events) + b"]"


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
    misses: int = 0  # lookups that started a new run
    running: int = 0  # runs not done yet
    engine_runs: int = 0
    engine_failures: int = 0
    engine_ms_total: float = 0.0
    # By outcome ("succeeded", "failed"): executions per ENGINE_DURATION_BUCKETS_S bucket (not
    # cumulative; the last one past the largest bound), and their seconds in all.
    engine_durations: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)


# Upper bounds of the engine duration buckets, in seconds: a default run takes milliseconds, a
# real engine's seconds to minutes.
ENGINE_DURATION_BUCKETS_S = (0.001, 0.005, 0.025, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def duration_bucket(seconds: float) -> int:
    """The index of the bucket ``seconds`` falls in (len(ENGINE_DURATION_BUCKETS_S) past them all)."""
    return bisect.bisect_left(ENGINE_DURATION_BUCKETS_S, seconds)


def canonical_json(value: object) -> bytes:
    """The contract's canonical JSON: compact, keys sorted, UTF-8 with non-ASCII kept.

    :raises ValueError: ``value`` holds something JSON cannot carry (NaN, infinity).
    :raises TypeError: ``value`` holds something that is not JSON at all.
    """
    return json.dumps(
        value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


CheckResult = Literal["reference", "reproduced", "diverged"]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A cache key in the determinism ledger: its reference (the first done run's runId and
    digest) and the checks of later transcripts against it."""

    reference_run_id: str
    reference_digest: bytes  # sha256 of the reference's canonical events JSON
    checks: int
    divergences: int

    @property
    def status(self) -> str:
        if self.checks == 0:
            return "unchecked"
        return "diverged" if self.divergences else "reproduced"

    @property
    def reference_sha256(self) -> str:
        return self.reference_digest.hex()

    @property
    def reference_created_at(self) -> int:
        return run_created_at(self.reference_run_id)


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    """One transcript of a key held against the key's reference: ``reference`` when the key had
    none and this one became it (no check), else ``reproduced`` or ``diverged``; and the entry after."""

    result: CheckResult
    entry: LedgerEntry


@dataclass(frozen=True, slots=True)
class Divergence(NamedByRunId):
    """A transcript of a key that differed from the key's reference (a re-run's, or a verify's)."""

    cache_key: str
    engine_code_hash: str
    reference_run_id: str
    reference_sha256: str
    run_id: str  # the diverging run, or the verified one
    events_sha256: str  # the diverging transcript's
    at: int  # epoch milliseconds


@dataclass(frozen=True)
class LedgerFigures:
    """The ledger in all (with a shared backend, the fleet's): keys it holds, checks since it
    began, and the latest divergences, newest first."""

    keys: int
    reproduced: int
    diverged: int
    divergences: tuple[Divergence, ...] = ()

    @property
    def checks(self) -> int:
        return self.reproduced + self.diverged
