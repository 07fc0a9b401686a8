"""``run-registry``: the service's command line (installed as a console script by ``make run``).

    run-registry lookup <scenarioId> <seed> [--watch]  the run's runId (--watch: its events, live)
    run-registry events <runId>                         its transcript (JSON)
    run-registry snapshot <runId> -o <file>             its evidence pack
    run-registry verify <runId>                         execute it again: does it reproduce?
    run-registry compare <scenarioId> <seed> <scenarioId> <seed>
    run-registry new-key <keyId> <scopes>               a new secret and its RUN_REGISTRY_API_KEYS entry
    run-registry new-signing-key <file>                 a new evidence signing key, in a file of mode 0600
    run-registry verify-pack <pack.zip> --key <pem>     check an evidence pack offline
    run-registry check-engine <engine>                  is an engine well-formed and deterministic?

The online commands take --url (or RUN_REGISTRY_SERVICE_URL; default http://127.0.0.1:3001) and
--key (or RUN_REGISTRY_KEY).

Every command exits non-zero with one line on standard error when it fails. The offline ones import
nothing of the service they do not need (verify-pack: ``cryptography`` alone, no Flask, no Redis).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import NoReturn

from app.evidence.attestation import MAX_PACK_BYTES
from app.evidence.attestation import PackRefused
from app.evidence.attestation import check_pack
from app.signing import KeyMaterialError
from app.signing import PublicKey
from app.signing import public_keys_from_pem

if TYPE_CHECKING:
    from app.client import Service

# What a terminal would act on, or cannot show: C0 and C1 controls, line and paragraph separators,
# and the rest of what is not printable; but for the text's own newlines and tabs.
# Bidirectional overrides and isolates too: they reorder what a terminal shows ("Trojan Source").
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ufff9-\ufffb]")


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
    online.add_argument("--wait", type=float, default=600.0, metavar="seconds",
                        help="how long to keep asking about a run that is still running (default 600)")
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
    snapshot.add_argument("--force", action="store_true", help="replace the file if it exists")
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
    signing = commands.add_parser(
        "new-signing-key", help="write a new Ed25519 signing key (PKCS#8 PEM, readable by you alone) to a file",
        description="Write a new evidence signing key to a new file, mode 0600, for RUN_REGISTRY_SIGNING_KEY (a fleet"
                    " on Redis needs one: the registry never keeps a key). Refuses to overwrite a file.",
    )
    signing.add_argument("file")
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
    if args.command == "new-signing-key":
        return _new_signing_key(args.file)
    if args.command == "verify-pack":
        return _verify_pack(args.pack, args.key)
    if args.command == "check-engine":
        return _check_engine(args.spec, args.scenario, args.seed, args.timeout)
    return _online(args)


def _online(args: argparse.Namespace) -> int:
    """The commands that ask a running service: each a request or two of its HTTP API."""
    from app.client import Service
    from app.client import ServiceError

    service = Service(args.url, args.key, pending_deadline_s=args.wait)
    try:
        if args.command == "lookup":
            return _lookup(service, args.scenario_id, args.seed, args.watch)
        if args.command == "events":
            print(terminal_safe(service.done(f"/runs/{_path(args.run_id)}/events").body.decode("utf-8", "replace")))
            return 0
        if args.command == "snapshot":
            answer = service.done(f"/runs/{_path(args.run_id)}/snapshot")
            if answer.headers.get("Content-Type") != "application/zip" or not answer.body.startswith(b"PK\x03\x04"):
                raise ServiceError("the answer is not a ZIP evidence pack; nothing was written")
            _write_new(args.output, answer.body, args.force)
            print(f"{terminal_safe(args.output)}: {len(answer.body):,} bytes (check it: run-registry verify-pack"
                  f" {terminal_safe(args.output)} --key <keys>)")
            return 0
        if args.command == "verify":
            verdict = service.ask("POST", f"/runs/{_path(args.run_id)}/verify").json()
            print(json.dumps(verdict, indent=2, ensure_ascii=True))  # ASCII: nothing a terminal acts on
            return 0 if verdict["reproducible"] else 1
        sides = {side: {"scenarioId": getattr(args, f"{side}_scenario"), "seed": getattr(args, f"{side}_seed")}
                 for side in ("left", "right")}
        compared = service.ask("POST", "/compare", sides, headers={"Prefer": "wait=25"}).json()
        print(json.dumps(compared, indent=2, ensure_ascii=True))
        return 0
    except ServiceError as err:
        print(f"run-registry: {args.command}: {terminal_safe(str(err))}", file=sys.stderr)
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
        print(terminal_safe(f"{event.id} {event.type} {event.data}"), flush=True)
    return 0


def terminal_safe(text: str) -> str:
    """Text from a server or an engine, made safe to print: every character a terminal would act
    on (C0 and C1 controls: ESC[2J, OSC titles and hyperlinks, U+009B), and every other one that is
    not printable, written as a JSON escape ``\\u009b``. Lossless inside JSON strings, where
    such characters can only be; line breaks of the text itself are kept."""
    return _UNPRINTABLE.sub(lambda found: _escaped(found.group()), text)


def _escaped(character: str) -> str:
    code = ord(character)
    if code > 0xFFFF:  # a JSON escape is UTF-16: a pair of surrogates
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _write_new(path: str, data: bytes, force: bool) -> None:
    """Write ``data`` to ``path`` whole or not at all: into a new file beside it, renamed over it
    (a symlink at ``path`` is replaced, not followed); an existing file only with ``force``."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(errno.EEXIST, "exists; not overwritten (--force replaces it)", path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".run-registry-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


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


def _new_signing_key(path: str) -> int:
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
