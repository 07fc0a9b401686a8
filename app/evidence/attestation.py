"""Signed evidence: the pack's attestation (a DSSE envelope over an in-toto Statement), and the
offline check of a whole pack against a public key (``run-registry verify-pack``).

DSSE's pre-authentication encoding and the Statement are a few lines of bytes and JSON, written
here: securesystemslib would add a dependency for them and insists that a signature's keyid
match its own key ids. The tests check these envelopes with securesystemslib's DSSE verifier
and these Statements with in-toto's own validator. Imports nothing of the service but
``app.signing``, so the check runs anywhere ``cryptography`` is installed, with no service.

The pack is read as its entries and nothing else, bounded (``strict_zip``), so that what the
check reads is what any extractor gets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from app.evidence.strict_zip import ATTESTATION
from app.evidence.strict_zip import CHECKSUMS
from app.evidence.strict_zip import PACK_FILES
from app.evidence.strict_zip import SUBJECTS
from app.evidence.strict_zip import PackRefused
from app.evidence.strict_zip import pack_files_read
from app.evidence.strict_zip import shown
from app.signing import PublicKey
from app.signing import SigningKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# The service's own predicate, documented in docs/api.md ("Signed evidence"). A URN: a name
# under no domain this project would have to own for it to stay true.
PREDICATE_TYPE = "urn:run-registry:evidence-pack:v1"
# The signed statement: the manifest's fields and three digests.
MAX_STATEMENT_BYTES = 64 * 1024
# The service signs with one key; a few leave room to co-sign. Each is tried with every key given.
MAX_SIGNATURES = 8
PREDICATE_FIELDS = ("runId", "scenarioId", "seed", "engineCodeHash", "engine", "cacheKey", "createdAt", "count",
                    "eventsSha256")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1's pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(files: Mapping[str, bytes], manifest: Mapping[str, Any]) -> bytes:
    """The in-toto Statement v1 over the pack's files, its predicate the run as the manifest says."""
    return json.dumps(
        {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": name, "digest": {"sha256": sha256_hex(files[name])}} for name in SUBJECTS],
            "predicateType": PREDICATE_TYPE,
            "predicate": {field: manifest[field] for field in PREDICATE_FIELDS},
        },
        separators=(",", ":"), ensure_ascii=False,
    ).encode()


def envelope(payload: bytes, key: SigningKey) -> bytes:
    """A DSSE envelope: ``payload`` signed by ``key``; the same bytes every time (Ed25519 is deterministic)."""
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    document = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(signature).decode()}],
    }
    return json.dumps(document, indent=2).encode() + b"\n"


def checksums(files: Mapping[str, bytes]) -> bytes:
    """SHA256SUMS of ``files``, as ``sha256sum -c`` reads it."""
    return _checksums({name: sha256_hex(data) for name, data in files.items()})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CheckedPack:
    """A pack that passed: the run it is evidence of, and the key that signed it."""

    predicate: dict[str, Any]
    key_id: str
    # Signed by a key other than the first given: GET /signing-keys lists the key in use first,
    # then retired ones.
    retired: bool


def check_pack(pack: bytes, keys: Sequence[PublicKey]) -> CheckedPack:
    """Check an evidence pack offline: its attestation is signed by one of ``keys``, every file
    is the one the signed statement names, and nothing is missing, added or hidden.

    :raises PackRefused: with what is wrong.
    """
    digests, files = pack_files_read(pack)
    payload, signer = _signed_payload(files[ATTESTATION], keys)
    signed = _statement(payload)
    for subject in signed["subject"]:
        if digests[subject["name"]] != subject["digest"]["sha256"]:
            raise PackRefused(f"{subject['name']} is not the file the signed statement names (its SHA-256 differs)")
    predicate = signed["predicate"]
    manifest = _json_object(files["manifest.json"], "manifest.json")
    if any(manifest.get(field) != predicate[field] for field in PREDICATE_FIELDS):
        raise PackRefused("manifest.json does not describe the run the signed statement does")
    if digests["events.json"] != predicate["eventsSha256"]:
        raise PackRefused("events.json is not the transcript whose eventsSha256 the signed statement names")
    if files[CHECKSUMS] != _checksums({name: digests[name] for name in PACK_FILES[:-1]}):
        raise PackRefused(f"{CHECKSUMS} does not list the pack's files and their digests")
    return CheckedPack(predicate, keys[signer].key_id, retired=signer > 0)


def _checksums(digests: Mapping[str, str]) -> bytes:
    return "".join(f"{digest}  {name}\n" for name, digest in digests.items()).encode()


def _signed_payload(document: bytes, keys: Sequence[PublicKey]) -> tuple[bytes, int]:
    """The envelope's payload, and the place in ``keys`` of the first key that signed it."""
    envelope_ = _json_object(document, ATTESTATION)
    payload_type, payload_b64, signatures = (envelope_.get(name) for name in ("payloadType", "payload", "signatures"))
    if payload_type != PAYLOAD_TYPE:
        raise PackRefused(f"{ATTESTATION} is not a DSSE envelope of an in-toto statement (payloadType)")
    if not isinstance(payload_b64, str) or not isinstance(signatures, list) or not signatures:
        raise PackRefused(f"{ATTESTATION} is not a DSSE envelope (payload, signatures)")
    if len(signatures) > MAX_SIGNATURES:
        raise PackRefused(f"{ATTESTATION} holds {len(signatures)} signatures; an evidence pack has at most"
                          f" {MAX_SIGNATURES}")
    payload = _base64(payload_b64, "payload")
    if len(payload) > MAX_STATEMENT_BYTES:
        raise PackRefused(f"{ATTESTATION}'s payload is {len(payload)} bytes, more than a signed statement ever is"
                          f" ({MAX_STATEMENT_BYTES})")
    message = pae(payload_type, payload)
    sigs, named = [], []
    for signature in signatures:
        if not isinstance(signature, dict) or not isinstance(signature.get("sig"), str):
            raise PackRefused(f"{ATTESTATION} holds a malformed signature")
        sigs.append(_base64(signature["sig"], "signature"))
        keyid = signature.get("keyid")
        named.append(keyid if isinstance(keyid, str) else "(none)")
    for position, key in enumerate(keys):  # keys first: a pack the key in use signed is not a retired key's
        for sig in sigs:  # a keyid is a hint (DSSE): a signature is tried with every key
            try:
                key.key.verify(sig, message)
            except InvalidSignature:
                continue
            return payload, position
    raise PackRefused(
        f"not signed by the given key{'s' if len(keys) > 1 else ''} (its signature names keyId"
        f" {', '.join(shown(name) for name in named[:3])}; the key given is {keys[0].key_id if keys else 'none'})"
    )


def _statement(payload: bytes) -> dict[str, Any]:
    """The signed statement, in the shape this service signs (it is signed, so a misshapen one was made so)."""
    signed = _json_object(payload, "the signed statement")
    if signed.get("_type") != STATEMENT_TYPE or signed.get("predicateType") != PREDICATE_TYPE:
        raise PackRefused(f"the signed statement is not an in-toto Statement v1 of {PREDICATE_TYPE}")
    subjects = signed.get("subject")
    if not isinstance(subjects, list) or [_subject_name(subject) for subject in subjects] != list(SUBJECTS):
        raise PackRefused(f"the signed statement's subjects are not {', '.join(SUBJECTS)} with their SHA-256")
    predicate = signed.get("predicate")
    if not isinstance(predicate, dict) or any(field not in predicate for field in PREDICATE_FIELDS):
        raise PackRefused("the signed statement's predicate does not describe a run")
    return signed


def _subject_name(subject: object) -> str | None:
    """A subject's name, if it is one with a SHA-256 digest."""
    if not isinstance(subject, dict):
        return None
    digest = subject.get("digest")
    return subject.get("name") if isinstance(digest, dict) and isinstance(digest.get("sha256"), str) else None


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except RecursionError:  # json's parser recurses once per level: thousands deep, it runs out of stack
        raise PackRefused(f"{name} is nested too deeply to be JSON the service wrote") from None
    except (UnicodeDecodeError, ValueError):
        raise PackRefused(f"{name} is not JSON") from None
    if not isinstance(document, dict):
        raise PackRefused(f"{name} is not a JSON object")
    return document


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PackRefused(f"{ATTESTATION}'s {what} is not base64") from None
