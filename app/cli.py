"""``run-registry``: the service's command line (installed as a console script by ``make run``).

    run-registry new-key <keyId> <scopes>             a new secret and its RUN_REGISTRY_API_KEYS entry
    run-registry verify-pack <pack.zip> --key <pem>   check an evidence pack offline

Every command exits non-zero with one line on standard error when it fails. The offline ones import
nothing of the service they do not need (verify-pack: ``cryptography`` alone, no Flask, no Redis).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.evidence.attestation import PackRefused
from app.evidence.attestation import check_pack
from app.signing import KeyMaterialError
from app.signing import PublicKey
from app.signing import public_keys_from_pem

MAX_PACK_BYTES = 4 << 30  # a file larger than this is no evidence pack (transcripts are bounded)


class _Parser(argparse.ArgumentParser):
    """argparse's, but a usage error is one line, as every failure of this command is."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="run-registry", description="The Run Registry's command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    make_key = commands.add_parser(
        "new-key", help="print a new secret and its RUN_REGISTRY_API_KEYS entry",
        description="Print a new secret (give it to the key's holder) and its entry (give that to the service:"
                    " it holds the secret's SHA-256 only).",
    )
    make_key.add_argument("key_id", metavar="keyId", help="1-64 characters of A-Z a-z 0-9 . _ -")
    make_key.add_argument("scopes", help="one or more of read, run, ops joined by +, such as read+run")
    check = commands.add_parser(
        "verify-pack", help="check an evidence pack offline against the service's public key",
        description="Check a snapshot ZIP with nothing but the public key: its attestation is signed by the key,"
                    " every file is the one the signature covers, and nothing is missing or added. Exits 0 for a"
                    " genuine pack, 1 (saying why) for any other.",
    )
    check.add_argument("pack", help="the pack, as GET /runs/<runId>/snapshot gave it")
    check.add_argument("--key", required=True, metavar="public-key.pem",
                       help="PEM public key(s), or GET /signing-keys's JSON saved to a file: any of them may sign")
    args = parser.parse_args(argv)
    if args.command == "new-key":
        return _new_key(args.key_id, args.scopes)
    if args.command == "verify-pack":
        return _verify_pack(args.pack, args.key)
    return 2  # argparse refuses unknown commands before this


def _new_key(key_id: str, scopes: str) -> int:
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


def _verify_pack(pack_path: str, key_path: str) -> int:
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
        print(f"run-registry: verify-pack: {pack_path} is NOT genuine: {err}", file=sys.stderr)
        return 1
    run = checked.predicate
    print(f"{pack_path}: genuine, signed by keyId {checked.key_id}")
    print(f"  run {run['runId']}: scenarioId {run['scenarioId']}, seed {run['seed']}, {run['count']} events")
    print(f"  eventsSha256 {run['eventsSha256']}")
    print(f"  engineCodeHash {run['engineCodeHash']}")
    return 0


def _public_keys(path: str) -> list[PublicKey]:
    """The keys in a PEM file, or in GET /signing-keys's JSON saved to one."""
    text = _read(path, 1 << 20)
    if text.lstrip().startswith(b"{"):
        try:
            listed = json.loads(text)["keys"]
            text = "".join(key["publicKey"] for key in listed).encode()
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: neither PEM nor the JSON of GET /signing-keys") from None
    try:
        return public_keys_from_pem(text)
    except KeyMaterialError as err:
        raise ValueError(f"{path} {err}") from None


def _read(path: str, limit: int) -> bytes:
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data


if __name__ == "__main__":
    sys.exit(main())
