"""A run as evidence: the ZIP pack and its attestation, the CSV export, the signing keys, and verification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint
from flask import Response

from app.api import answered_with
from app.api import bound_request_body
from app.api import caller
from app.api import conditional
from app.api import determinism_body
from app.api import evidence_service
from app.api import optional_json_body
from app.api import preferred_wait
from app.api import refuse_cross_site_posts
from app.api import requires
from app.api import run_service
from app.api import verification_service
from app.evidence.service import EvidenceService

bp = Blueprint("evidence", __name__)
# Verification starts engine work and takes a body: its checks run before it, and the reads
# (the blueprint above) pay for none of them.
verification_bp = Blueprint("verification", __name__)
verification_bp.before_request(bound_request_body)
verification_bp.before_request(refuse_cross_site_posts)


@bp.get("/runs/<run_id>/snapshot")
@requires("read")
def download_snapshot(run_id: str) -> Response:
    """The ZIP evidence pack, signed; byte-identical for the same run and signing key (once it is done).
    ---
    get:
      parameters: [run_id, Prefer]
      responses:
        '200':
          description: "<runId>.zip: manifest.json, events.json, events.csv, attestation.json, SHA256SUMS"
          content: {application/zip: {schema: {type: string, format: binary}}}
        '202': Pending
        '304': NotModified
        '404': NotFound
        '500': EngineError
        '503': Unavailable
    """
    return _download_done_run(run_id, "zip", "application/zip", EvidenceService.snapshot, signed=True)


@bp.get("/runs/<run_id>/attestation")
@requires("read")
def attestation(run_id: str) -> Response:
    """The run's signed attestation: the pack's attestation.json, a DSSE envelope over an in-toto Statement.
    ---
    get:
      parameters: [run_id, Prefer]
      responses:
        '200':
          description: The DSSE envelope (the same bytes as the pack's attestation.json)
          content: {application/json: {schema: AttestationResponse}}
        '202': Pending
        '304': NotModified
        '404': NotFound
        '500': EngineError
        '503': Unavailable
    """
    return _done_run_representation(run_id, "attestation", (("Content-Type", "application/json"),),
                                    EvidenceService.attestation, signed=True)


@bp.get("/signing-keys")
@requires()  # public keys are public: whoever checks a pack has no key (section 12)
def signing_keys() -> dict[str, Any]:
    """The public keys that check signed evidence offline: the key in use first, then retired ones.
    ---
    get:
      responses:
        '200':
          description: The public keys
          content: {application/json: {schema: SigningKeysResponse}}
        '503': Unavailable
    """
    return {"keys": [{"keyId": key.key_id, "algorithm": "ed25519", "publicKey": key.pem}
                     for key in evidence_service().public_keys()]}


@bp.get("/runs/<run_id>/export.csv")
@requires("read")
def export_csv(run_id: str) -> Response:
    """The transcript as CSV, one row per event (once the run is done).
    ---
    get:
      parameters: [run_id, Prefer]
      responses:
        '200':
          description: "<runId>.csv: position, type, tokenIndex, text, data; no cell a spreadsheet reads as a formula"
          content: {text/csv: {schema: {type: string}}}
        '202': Pending
        '304': NotModified
        '404': NotFound
        '500': EngineError
        '503': Unavailable
    """
    return _download_done_run(run_id, "csv", "text/csv; charset=utf-8", EvidenceService.export_csv)


@verification_bp.post("/runs/<run_id>/verify")
@requires("read", "run")
def verify(run_id: str) -> dict[str, Any]:
    """Execute the engine again and say whether the transcript reproduces byte for byte.

    It takes no input: a body, if any, must be JSON (so a form of another site cannot ask).
    ---
    post:
      parameters: [run_id]
      responses:
        '200':
          description: The verdict, with both digests
          content: {application/json: {schema: VerifyResponse}}
        '403': Forbidden
        '404': NotFound
        '409':
          description: "ENGINE_MISMATCH: recorded under another engineCodeHash; RUN_RUNNING: not done yet"
          content: {application/json: {schema: ErrorBody}}
        '413': TooLarge
        '415': NotJson
        '429': RateLimited
        '500': EngineError
        '503': Unavailable
    """
    optional_json_body()
    result = verification_service().verify(run_id, caller())
    return {
        "runId": result.run_id,
        "reproducible": result.reproducible,
        "recordedSha256": result.recorded_sha256,
        "replayedSha256": result.replayed_sha256,
        "firstDifference": result.first_difference,
        "recordedCount": result.recorded_count,
        "replayedCount": result.replayed_count,
        "durationMs": result.duration_ms,
        "determinism": determinism_body(result.determinism),
    }


def _download_done_run(
    run_id: str, extension: str, content_type: str, encode: Callable[..., bytes], signed: bool = False
) -> Response:
    """A done run's file, ``<runId>.<extension>``, with its ETag (202 while the run runs)."""
    # runIds are letters, digits and ._- (the scenarioId's alphabet): safe in a quoted filename.
    headers = (("Content-Type", content_type), ("Content-Disposition", f'attachment; filename="{run_id}.{extension}"'))
    return _done_run_representation(run_id, extension, headers, encode, signed)


def _done_run_representation(
    run_id: str, representation: str, headers: tuple[tuple[str, str], ...], encode: Callable[..., bytes],
    signed: bool = False,
) -> Response:
    """A done run's ``representation`` made by ``encode(evidence, record)`` (with the signing key
    when ``signed``: its ETag then names the key, so a new key makes new bytes and a new ETag)."""
    runs = run_service()
    wait = preferred_wait(runs)
    record = runs.done_run(run_id, wait.seconds, caller())
    evidence = evidence_service()
    arguments: tuple[Any, ...] = (evidence, record)
    if signed:
        key = evidence.signing_key()
        representation = f"{representation}.{key.key_id[:16]}"
        arguments += (key,)
    return answered_with(wait, conditional(record, representation, lambda: encode(*arguments), headers))
