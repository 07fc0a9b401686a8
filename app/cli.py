"""``run-registry``: the service's command line (installed as a console script by ``make run``).

    run-registry lookup <scenarioId> <seed> [--watch]  the run's runId (--watch: its events, live)
    run-registry events <runId>                         its transcript (JSON)
    run-registry snapshot <runId> -o <file>             its evidence pack
    run-registry verify <runId>                         execute it again: does it reproduce?
    run-registry compare <scenarioId> <seed> <scenarioId> <seed>
    run-registry new-key <keyId> <scopes>               a new secret and its RUN_REGISTRY_API_KEYS entry
    run-registry verify-pack <pack.zip> --key <pem>     check an evidence pack offline
    run-registry check-engine <engine>                  is an engine well-formed and deterministic?

The online commands take --url (or RUN_REGISTRY_SERVICE_URL; default http://127.0.0.1:3001) and
--key (or RUN_REGISTRY_KEY).

Every command exits non-zero with one line on standard error when it fails. The offline ones import
nothing of the service they do not need (verify-pack: ``cryptography`` alone, no Flask, no Redis).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import NoReturn

from app.evidence.attestation import PackRefused
from app.evidence.attestation import check_pack
from app.signing import KeyMaterialError
from app.signing import PublicKey
from app.signing import public_keys_from_pem

if TYPE_CHECKING:
    from app.client import Service

MAX_PACK_BYTES = 4 << 30  # a file larger than this is no evidence pack (transcripts are bounded)


class _Parser(argparse.ArgumentParser):
    """argparse's, but a usage error is one line, as every failure of this command is."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="run-registry", description="The Run Registry's command line.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    online = _Parser(add_help=False)
    online.add_argument("--url", default=os.environ.get("RUN_REGISTRY_SERVICE_URL") or "http://127.0.0.1:3001",
                        help="the service (default: RUN_REGISTRY_SERVICE_URL, else http://127.0.0.1:3001)")
    online.add_argument("--key", default=os.environ.get("RUN_REGISTRY_KEY"),
                        help="the secret of an API key (default: RUN_REGISTRY_KEY); never put it in a URL")
    lookup = commands.add_parser("lookup", parents=[online], help="look a run up (get or start it); print its runId",
                                 description="Print the runId of scenarioId and seed, starting the run if the"
                                             " registry has none. --watch prints its events as they come.")
    lookup.add_argument("scenario_id", metavar="scenarioId")
    lookup.add_argument("seed")
    lookup.add_argument("--watch", action="store_true", help="then stream its events, live, to the run's end")
    for name, text in (("events", "print a done run's transcript (JSON)"),
                       ("verify", "execute a run again; exit 0 if its transcript reproduces byte for byte")):
        command = commands.add_parser(name, parents=[online], help=text, description=text[0].upper() + text[1:] + ".")
        command.add_argument("run_id", metavar="runId")
    snapshot = commands.add_parser("snapshot", parents=[online], help="save a done run's signed evidence pack",
                                   description="Save the run's ZIP evidence pack (check it with verify-pack).")
    snapshot.add_argument("run_id", metavar="runId")
    snapshot.add_argument("-o", "--output", required=True, metavar="file")
    compare = commands.add_parser("compare", parents=[online], help="compare two runs (each looked up)",
                                  description="Look both up (get or start) and print their diff (POST /compare).")
    for side in ("left", "right"):
        compare.add_argument(f"{side}_scenario", metavar=f"{side}ScenarioId")
        compare.add_argument(f"{side}_seed", metavar=f"{side}Seed")
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
    engine = commands.add_parser(
        "check-engine", help="run an engine twice, apart: is it well-formed, deterministic, and what hash?",
        description="Run the engine twice, each in a process of its own; check every event is one the service"
                    " records and that both transcripts are byte-identical; print the engineCodeHash the service"
                    " would give it. Exit 0 only if all holds. Nothing is started but the engine.",
    )
    engine.add_argument("spec", metavar="engine", help="as RUN_REGISTRY_ENGINE takes it: module:attribute,"
                                                      " command:<command line>, or http(s)://...")
    engine.add_argument("--scenario", metavar="scenarioId",
                        help="default: the first of an LLM engine's scenarios, else check-engine")
    engine.add_argument("--seed", type=int, default=42)
    engine.add_argument("--timeout", type=float, default=60.0, metavar="seconds", help="for each execution")
    args = parser.parse_args(argv)
    if args.command == "new-key":
        return _new_key(args.key_id, args.scopes)
    if args.command == "verify-pack":
        return _verify_pack(args.pack, args.key)
    if args.command == "check-engine":
        return _check_engine(args.spec, args.scenario, args.seed, args.timeout)
    return _online(args)


def _online(args: argparse.Namespace) -> int:
    """The commands that ask a running service: each a request or two of its HTTP API."""
    from app.client import Service
    from app.client import ServiceError

    service = Service(args.url, args.key)
    try:
        if args.command == "lookup":
            return _lookup(service, args.scenario_id, args.seed, args.watch)
        if args.command == "events":
            print(service.done(f"/runs/{_path(args.run_id)}/events").body.decode())
            return 0
        if args.command == "snapshot":
            pack = service.done(f"/runs/{_path(args.run_id)}/snapshot").body
            with open(args.output, "wb") as file:
                file.write(pack)
            print(f"{args.output}: {len(pack):,} bytes (check it: run-registry verify-pack {args.output} --key <keys>)")
            return 0
        if args.command == "verify":
            verdict = service.ask("POST", f"/runs/{_path(args.run_id)}/verify").json()
            print(json.dumps(verdict, indent=2))
            return 0 if verdict["reproducible"] else 1
        sides = {side: {"scenarioId": getattr(args, f"{side}_scenario"), "seed": getattr(args, f"{side}_seed")}
                 for side in ("left", "right")}
        print(json.dumps(service.ask("POST", "/compare", sides, headers={"Prefer": "wait=25"}).json(), indent=2))
        return 0
    except ServiceError as err:
        print(f"run-registry: {args.command}: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"run-registry: {args.command}: {err.filename}: {err.strerror}", file=sys.stderr)
        return 1


def _lookup(service: Service, scenario_id: str, seed: str, watch: bool) -> int:
    answer = service.lookup(scenario_id, seed, wait=not watch)
    run_id = answer.json()["runId"]
    print(run_id, flush=True)
    if not watch:
        return 0
    for event in service.events(run_id):
        if event.type == "error":  # the service's end of a failed run (engines may not send this type)
            print(f"run-registry: lookup: run {run_id} failed: {_error_message(event.data)}", file=sys.stderr)
            return 1
        print(f"{event.id} {event.type} {event.data}", flush=True)
    return 0


def _error_message(data: str) -> str:
    """The message of a failed run's last SSE message, whatever arrived as its data."""
    try:
        message = json.loads(data).get("message")
    except (ValueError, AttributeError):
        message = None
    return message if isinstance(message, str) else f"(no message: {data[:200]!r})"


def _path(run_id: str) -> str:
    from urllib.parse import quote

    return quote(run_id, safe="")


def _check_engine(spec: str, scenario_id: str | None, seed: int, timeout_s: float) -> int:
    from app.engine.check import EngineCheckFailed
    from app.engine.check import check_engine

    try:
        checked = check_engine(spec, scenario_id, seed, timeout_s)
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
