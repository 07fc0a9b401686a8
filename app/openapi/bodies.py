"""The response bodies, as marshmallow schemas for /openapi.json only.

Views build these shapes directly (serving stored bytes on the hot paths); the schemathesis test
checks every response of the running service against the document, so the schemas and the views
cannot drift apart unnoticed. View docstrings name them (``schema: LookupResponse``).
"""

from __future__ import annotations

from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate


class ErrorBody(Schema):
    type = fields.String(required=True, metadata={"example": "BAD_INPUT"})
    message = fields.String(required=True)


class LookupResponse(Schema):
    run_id = fields.String(data_key="runId", required=True, metadata={"example": "run_pricing-v1_42_1764180000123"})
    source = fields.String(required=True, validate=validate.OneOf(["new", "cache"]))


class EngineInfo(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    kind = fields.String(validate=validate.OneOf(["python", "process", "http", "openai"]),
                         metadata={"description": "readiness: how the service runs its engine (docs/engines.md)"})


class LookupPending(Schema):
    run_id = fields.String(data_key="runId", required=True)
    source = fields.String(required=True, validate=validate.OneOf(["new", "cache"]))
    status = fields.String(required=True, validate=validate.OneOf(["running"]))


class RunPendingBody(Schema):
    run_id = fields.String(data_key="runId", required=True)
    status = fields.String(required=True, validate=validate.OneOf(["running"]))
    count = fields.Integer(required=True, metadata={"description": "events recorded so far"})


class LedgerReference(Schema):
    run_id = fields.String(data_key="runId", required=True)
    events_sha256 = fields.String(data_key="eventsSha256", required=True)
    created_at = fields.Integer(data_key="createdAt", metadata={"description": "epoch milliseconds"})


class Determinism(Schema):
    """The run's key in the determinism ledger: its reference (the first done run) and the checks
    of later transcripts (re-runs, verifies) against it."""

    status = fields.String(required=True, validate=validate.OneOf(["unchecked", "reproduced", "diverged"]))
    checks = fields.Integer(required=True)
    divergences = fields.Integer(required=True)
    reference = fields.Nested(LedgerReference, required=True, allow_none=True,
                              metadata={"description": "null once the ledger forgot the key"})


class RunMetadata(Schema):
    run_id = fields.String(data_key="runId", required=True)
    scenario_id = fields.String(data_key="scenarioId", required=True)
    seed = fields.Integer(required=True)
    engine = fields.Nested(EngineInfo, required=True)
    engine_code_hash = fields.String(data_key="engineCodeHash", required=True)
    cache_key = fields.String(
        data_key="cacheKey", required=True, metadata={"description": "sha256(scenarioId:seed:engineCodeHash), hex"}
    )
    created_at = fields.Integer(data_key="createdAt", required=True, metadata={"description": "epoch milliseconds"})
    status = fields.String(required=True, validate=validate.OneOf(["running", "done", "failed"]))
    count = fields.Integer(required=True, metadata={"description": "events recorded (so far, while running)"})
    events_sha256 = fields.String(data_key="eventsSha256", metadata={"description": "once done"})
    expires_at = fields.Integer(
        data_key="expiresAt", metadata={"description": "once done: epoch milliseconds; live while now < it"}
    )
    hits = fields.Integer(required=True)
    determinism = fields.Nested(Determinism, metadata={"description": "once done"})
    error = fields.Nested(ErrorBody, metadata={"description": "once failed"})


class ListedRunBody(Schema):
    run_id = fields.String(data_key="runId", required=True)
    scenario_id = fields.String(data_key="scenarioId", required=True)
    seed = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["running", "done", "failed"]))
    created_at = fields.Integer(data_key="createdAt", required=True, metadata={"description": "epoch milliseconds"})
    determinism = fields.Nested(Determinism, required=True, allow_none=True,
                                metadata={"description": "a done run's key in the ledger; null otherwise"})


class RunsPage(Schema):
    runs = fields.List(fields.Nested(ListedRunBody), required=True)
    next = fields.String(required=True, allow_none=True,
                         metadata={"description": "the cursor of the next page; null after the oldest run"})


class EventSchema(Schema):
    type = fields.String(required=True)
    data = fields.Dict(required=True)


class EventsResponse(Schema):
    run_id = fields.String(data_key="runId", required=True)
    events = fields.List(fields.Nested(EventSchema), required=True)
    count = fields.Integer(required=True)


class CompareSide(Schema):
    run_id = fields.String(data_key="runId", required=True)
    source = fields.String(required=True, validate=validate.OneOf(["new", "cache"]))
    scenario_id = fields.String(data_key="scenarioId", required=True)
    seed = fields.Integer(required=True)
    count = fields.Integer(required=True)
    events_sha256 = fields.String(data_key="eventsSha256", required=True)


class MetricDeltaSchema(Schema):
    left = fields.Raw(required=True, allow_none=True)
    right = fields.Raw(required=True, allow_none=True)
    delta = fields.Float(required=True, allow_none=True)


class TokenCounts(Schema):
    left = fields.Integer(required=True)
    right = fields.Integer(required=True)
    delta = fields.Integer(required=True)


class DiffSchema(Schema):
    identical = fields.Boolean(required=True)
    first_difference = fields.Integer(data_key="firstDifference", required=True, allow_none=True)
    tokens = fields.Nested(TokenCounts, required=True)
    report = fields.Dict(keys=fields.String(), values=fields.Nested(MetricDeltaSchema), required=True)


class CompareResponse(Schema):
    left = fields.Nested(CompareSide, required=True)
    right = fields.Nested(CompareSide, required=True)
    diff = fields.Nested(DiffSchema, required=True)


class VerifyResponse(Schema):
    run_id = fields.String(data_key="runId", required=True)
    reproducible = fields.Boolean(required=True)
    recorded_sha256 = fields.String(data_key="recordedSha256", required=True)
    replayed_sha256 = fields.String(data_key="replayedSha256", required=True)
    first_difference = fields.Integer(data_key="firstDifference", required=True, allow_none=True)
    recorded_count = fields.Integer(data_key="recordedCount", required=True)
    replayed_count = fields.Integer(data_key="replayedCount", required=True)
    duration_ms = fields.Float(data_key="durationMs", required=True)
    determinism = fields.Nested(Determinism, required=True, metadata={"description": "the key's, after this check"})


class DsseSignature(Schema):
    keyid = fields.String(required=True, metadata={"description": "the keyId of the key (GET /signing-keys)"})
    sig = fields.String(required=True, metadata={"description": "standard base64 of the Ed25519 signature"})


class AttestationResponse(Schema):
    """A DSSE v1 envelope; its payload is an in-toto Statement v1 (docs/api.md, "Signed evidence")."""

    payload_type = fields.String(data_key="payloadType", required=True,
                                 validate=validate.OneOf(["application/vnd.in-toto+json"]))
    payload = fields.String(required=True, metadata={"description": "standard base64 of the statement's JSON"})
    signatures = fields.List(fields.Nested(DsseSignature), required=True)


class SigningKey(Schema):
    key_id = fields.String(data_key="keyId", required=True,
                           metadata={"description": "hex SHA-256 of the key's DER SubjectPublicKeyInfo"})
    algorithm = fields.String(required=True, validate=validate.OneOf(["ed25519"]))
    public_key = fields.String(data_key="publicKey", required=True, metadata={"description": "PEM"})


class SigningKeysResponse(Schema):
    keys = fields.List(fields.Nested(SigningKey), required=True,
                       metadata={"description": "the key in use first, then retired ones"})


class DivergenceBody(Schema):
    scenario_id = fields.String(data_key="scenarioId", required=True)
    seed = fields.Integer(required=True)
    engine_code_hash = fields.String(data_key="engineCodeHash", required=True)
    cache_key = fields.String(data_key="cacheKey", required=True)
    reference = fields.Nested(LedgerReference, required=True)
    run_id = fields.String(data_key="runId", required=True,
                           metadata={"description": "the diverging run, or the verified one"})
    events_sha256 = fields.String(data_key="eventsSha256", required=True)
    at = fields.Integer(required=True, metadata={"description": "epoch milliseconds"})


class DeterminismResponse(Schema):
    keys = fields.Integer(required=True, metadata={"description": "cache keys the ledger holds"})
    checks = fields.Integer(required=True)
    reproduced = fields.Integer(required=True)
    diverged = fields.Integer(required=True)
    divergences = fields.List(fields.Nested(DivergenceBody), required=True,
                              metadata={"description": "the 20 most recent, newest first"})


class HealthResponse(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class ReadinessResponse(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
    backend = fields.String(required=True, validate=validate.OneOf(["memory", "redis"]))
    engine = fields.Nested(EngineInfo, required=True)
    engine_code_hash = fields.String(data_key="engineCodeHash", required=True)
    execution = fields.String(required=True, validate=validate.OneOf(["local", "queue"]))
    workers = fields.Integer(metadata={"description": "queue execution: workers serving this engineCodeHash"})


class StatsResponse(Schema):
    """The original document's statistics (snake_case, as it has them), and more."""

    backend = fields.String(required=True, validate=validate.OneOf(["memory", "redis"]))
    total_entries = fields.Integer(required=True)
    ttl_minutes = fields.Float(required=True)
    entries_by_scenario = fields.Dict(
        keys=fields.String(), values=fields.Integer(), required=True,
        metadata={"description": "The 20 scenarios with the most entries, most first"},
    )
    scenario_count = fields.Integer(required=True, metadata={"description": "Scenarios with entries, listed or not"})
    entries_in_unlisted_scenarios = fields.Integer(required=True)
    hits = fields.Integer(required=True)
    misses = fields.Integer(required=True)
    hit_ratio = fields.Float(required=True, allow_none=True)
    evictions = fields.Integer(required=True)
    expirations = fields.Integer(required=True)
    engine_executions = fields.Integer(required=True)
    engine_failures = fields.Integer(required=True)
    engine_mean_ms = fields.Float(required=True, allow_none=True)
    running = fields.Integer(required=True, metadata={"description": "runs not done yet"})
    execution = fields.String(required=True, validate=validate.OneOf(["local", "queue"]))
    workers = fields.Integer(metadata={"description": "queue execution: workers serving this engineCodeHash"})
