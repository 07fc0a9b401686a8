"""The commands that need no service (new-key, new-signing-key, verify-pack, check-engine): they
import nothing of it they do not need (verify-pack: ``cryptography`` alone, no Flask, no Redis)."""

from __future__ import annotations

import json
import os
import sys

from app.cli.terminal import terminal_safe
from app.evidence.attestation import PackRefused
from app.evidence.attestation import check_pack
from app.evidence.strict_zip import MAX_PACK_BYTES
from app.signing import KeyMaterialError
from app.signing import PublicKey
from app.signing import public_keys_from_pem


def check_engine(spec: str, scenario_id: str | None, seed: int, timeout_s: float) -> int:
    from app.engine.check import EngineCheckFailed
    from app.engine.check import check_engine as checked_twice

    try:
        checked = checked_twice(spec, scenario_id, seed, timeout_s)
    except EngineCheckFailed as err:
        print(f"run-registry: check-engine: {spec}: {err}", file=sys.stderr)
        return 1
    print(f"{spec}: {checked.name} {checked.version} ({checked.kind} engine), scenario {checked.scenario_id}"
          f" seed {seed}")
    for number, execution in enumerate(checked.executions, start=1):
        where = f" (pid {execution.pid})" if execution.pid is not None else ""
        print(f"  execution {number}{where}: {execution.events} events, eventsSha256 {execution.events_sha256}")
        for line in execution.stderr[:3]:
            print(f"    stderr: {line}")
    print("  well-formed: every event is one the service records")
    print("  deterministic: both executions' transcripts are byte-identical")
    print(f"  engineCodeHash: {checked.engine_code_hash}")
    return 0


def new_signing_key(path: str) -> int:
    """A new key in a new file, created readable by its owner alone (never widened afterwards)."""
    from app.signing import SigningKey

    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"run-registry: new-signing-key: {path} exists; it is not overwritten (a key in use would be lost)",
              file=sys.stderr)
        return 1
    except OSError as err:
        print(f"run-registry: new-signing-key: {path}: {err.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as file:
        file.write(key.pem())
    print(f"{path}: a new Ed25519 signing key, keyId {key.key_id}")
    print(f"Start every process of the service with RUN_REGISTRY_SIGNING_KEY={path} (or the file's text); keep the"
          " file secret, and give its public key (GET /signing-keys) to whoever checks packs.")
    return 0


def new_key(key_id: str, scopes: str) -> int:
    from app.access import KeyEntryError
    from app.access import new_key

    try:
        secret, entry = new_key(key_id, scopes)
    except KeyEntryError as err:
        print(f"run-registry: {err}", file=sys.stderr)
        return 2
    print(f"secret: {secret}")
    print(f"entry:  {entry}")
    print("Give the secret to the key's holder (Authorization: Bearer <secret>); add the entry to"
          " RUN_REGISTRY_API_KEYS, comma-separated. The secret is shown once and kept nowhere.")
    return 0


def verify_pack(pack_path: str, key_path: str) -> int:
    try:
        keys = _public_keys(key_path)
        pack = _read(pack_path, MAX_PACK_BYTES)
    except OSError as err:
        print(f"run-registry: verify-pack: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"run-registry: verify-pack: {err}", file=sys.stderr)
        return 2
    try:
        checked = check_pack(pack, keys)
    except PackRefused as err:
        print(f"run-registry: verify-pack: {terminal_safe(pack_path)} is NOT genuine: {terminal_safe(str(err))}",
              file=sys.stderr)
        return 1
    # The predicate is signed, not harmless: its strings went through an engine and a scenarioId.
    run = {name: terminal_safe(str(value)) for name, value in checked.predicate.items()}
    # Still genuine (exit 0): a rotation retires a key, and packs it signed before stay evidence. A
    # compromised key is dropped from /signing-keys, and then no longer checks anything out.
    signer = f"keyId {checked.key_id}" + (", a retired key (not the first of those given)" if checked.retired else "")
    print(f"{terminal_safe(pack_path)}: genuine, signed by {signer}")
    print(f"  run {run.get('runId')}: scenarioId {run.get('scenarioId')}, seed {run.get('seed')},"
          f" {run.get('count')} events")
    print(f"  eventsSha256 {run.get('eventsSha256')}")
    print(f"  engineCodeHash {run.get('engineCodeHash')}")
    return 0


def _public_keys(path: str) -> list[PublicKey]:
    """The keys in a PEM file, or in GET /signing-keys's JSON saved to one."""
    return keys_in(_read(path, 1 << 20), path)


def keys_in(text: bytes, where: str) -> list[PublicKey]:
    """The keys in PEM, or in GET /signing-keys's JSON; ``where`` names the text in a ValueError."""
    if text.lstrip().startswith(b"{"):
        try:
            listed = json.loads(text)["keys"]
            text = "".join(key["publicKey"] for key in listed).encode()
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ValueError(f"{where}: neither PEM nor the JSON of GET /signing-keys") from None
    try:
        return public_keys_from_pem(text)
    except KeyMaterialError as err:
        raise ValueError(f"{where} {err}") from None


def _read(path: str, limit: int) -> bytes:
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data
