"""Signed evidence: the pack's attestation (a DSSE envelope over an in-toto Statement), and the
offline check of a whole pack against a public key (``run-registry verify-pack``).

DSSE's pre-authentication encoding and the Statement are a few lines of bytes and JSON, written
here: securesystemslib would add a dependency for them and insists that a signature's keyid
match its own key ids. The tests check these envelopes with securesystemslib's DSSE verifier
and these Statements with in-toto's own validator. Imports nothing of the service but
``app.signing``, so the check runs anywhere ``cryptography`` is installed, with no service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from app.signing import PublicKey
from app.signing import SigningKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# The service's own predicate, documented in docs/api.md ("Signed evidence"). A URN: a name
# under no domain this project would have to own for it to stay true.
PREDICATE_TYPE = "urn:run-registry:evidence-pack:v1"
ATTESTATION = "attestation.json"
CHECKSUMS = "SHA256SUMS"
SUBJECTS = ("manifest.json", "events.json", "events.csv")  # the signed files, in the pack's order
PACK_FILES = (*SUBJECTS, ATTESTATION, CHECKSUMS)
PREDICATE_FIELDS = ("runId", "scenarioId", "seed", "engineCodeHash", "engine", "cacheKey", "createdAt", "count",
                    "eventsSha256")
# Far above any pack the service makes (transcripts are bounded), far below what would exhaust
# a machine: a hostile "pack" is refused, not read into memory whole.
MAX_MEMBER_BYTES = 1 << 30


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
    return "".join(f"{sha256_hex(data)}  {name}\n" for name, data in files.items()).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class PackRefused(Exception):
    """The pack is not genuine evidence signed by one of the keys; the message says why."""


@dataclass(frozen=True)
class CheckedPack:
    """A pack that passed: the run it is evidence of, and the key that signed it."""

    predicate: dict[str, Any]
    key_id: str


def check_pack(pack: bytes, keys: Sequence[PublicKey]) -> CheckedPack:
    """Check an evidence pack offline: its attestation is signed by one of ``keys``, every file
    is the one the signed statement names, and nothing is missing or added.

    :raises PackRefused: with what is wrong.
    """
    files = _pack_files(pack)
    payload, key_id = _signed_payload(files[ATTESTATION], keys)
    signed = _statement(payload)
    for subject in signed["subject"]:
        if sha256_hex(files[subject["name"]]) != subject["digest"]["sha256"]:
            raise PackRefused(f"{subject['name']} is not the file the signed statement names (its SHA-256 differs)")
    predicate = signed["predicate"]
    manifest = _json_object(files["manifest.json"], "manifest.json")
    if any(manifest.get(field) != predicate[field] for field in PREDICATE_FIELDS):
        raise PackRefused("manifest.json does not describe the run the signed statement does")
    if sha256_hex(files["events.json"]) != predicate["eventsSha256"]:
        raise PackRefused("events.json is not the transcript whose eventsSha256 the signed statement names")
    if files[CHECKSUMS] != checksums({name: files[name] for name in PACK_FILES[:-1]}):
        raise PackRefused(f"{CHECKSUMS} does not list the pack's files and their digests")
    return CheckedPack(predicate, key_id)


def _pack_files(pack: bytes) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(pack))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as err:
        raise PackRefused(f"not a ZIP file ({err})") from None
    names = [entry.filename for entry in entries]
    if len(set(names)) != len(names):
        raise PackRefused("holds a file name twice")
    if missing := [name for name in PACK_FILES if name not in names]:
        raise PackRefused(f"{', '.join(missing)} missing")
    if extra := [name for name in names if name not in PACK_FILES]:
        raise PackRefused(f"holds files an evidence pack does not: {', '.join(_shown(name) for name in extra[:5])}")
    files = {}
    for entry in entries:
        if entry.file_size > MAX_MEMBER_BYTES:
            raise PackRefused(f"{entry.filename} is larger than any evidence pack holds")
        try:
            with archive.open(entry) as member:
                data = member.read(MAX_MEMBER_BYTES + 1)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError) as err:
            raise PackRefused(f"{entry.filename} is damaged ({err})") from None
        if len(data) > MAX_MEMBER_BYTES:
            raise PackRefused(f"{entry.filename} is larger than any evidence pack holds")
        files[entry.filename] = data
    return files


def _signed_payload(document: bytes, keys: Sequence[PublicKey]) -> tuple[bytes, str]:
    """The envelope's payload, once a signature of one of ``keys`` over it is found."""
    envelope_ = _json_object(document, ATTESTATION)
    payload_type, payload_b64, signatures = (envelope_.get(name) for name in ("payloadType", "payload", "signatures"))
    if payload_type != PAYLOAD_TYPE:
        raise PackRefused(f"{ATTESTATION} is not a DSSE envelope of an in-toto statement (payloadType)")
    if not isinstance(payload_b64, str) or not isinstance(signatures, list) or not signatures:
        raise PackRefused(f"{ATTESTATION} is not a DSSE envelope (payload, signatures)")
    payload = _base64(payload_b64, "payload")
    message = pae(payload_type, payload)
    named = []
    for signature in signatures:
        if not isinstance(signature, dict) or not isinstance(signature.get("sig"), str):
            raise PackRefused(f"{ATTESTATION} holds a malformed signature")
        sig = _base64(signature["sig"], "signature")
        keyid = signature.get("keyid")
        named.append(keyid if isinstance(keyid, str) else "(none)")
        for key in keys:  # a keyid is a hint (DSSE): a signature is tried with every key
            try:
                key.key.verify(sig, message)
            except InvalidSignature:
                continue
            return payload, key.key_id
    raise PackRefused(
        f"not signed by the given key{'s' if len(keys) > 1 else ''} (its signature names keyId"
        f" {', '.join(_shown(name) for name in named[:3])}; the key given is {keys[0].key_id if keys else 'none'})"
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


def _shown(text: str) -> str:
    return repr(text[:80])
