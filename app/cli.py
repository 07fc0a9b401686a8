"""``run-registry``: the service's command line (installed as a console script by ``make run``).

    run-registry lookup <scenarioId> <seed> [--watch]  the run's runId (--watch: its events, live)
    run-registry status <runId>                         its status, count, digest and determinism
    run-registry events <runId>                         its transcript (JSON)
    run-registry snapshot <runId> -o <file>             its evidence pack
    run-registry verify <runId>                         execute it again: does it reproduce?
    run-registry compare <scenarioId> <seed> <scenarioId> <seed>
    run-registry signing-keys [-o <file>]               the public keys that check evidence packs
    run-registry new-key <keyId> <scopes>               a new secret and its RUN_REGISTRY_API_KEYS entry
    run-registry new-signing-key <file>                 a new evidence signing key, in a file of mode 0600
    run-registry verify-pack <pack.zip> --public-key <keys>  check an evidence pack offline
    run-registry check-engine <engine>                  is an engine well-formed and deterministic?

The online commands take --url (or RUN_REGISTRY_SERVICE_URL; default http://127.0.0.1:3001) and
--key (or RUN_REGISTRY_KEY).

Every command exits non-zero with one line on standard error when it fails. A reader that closes
the pipe, or Ctrl-C, ends it as either ends a Unix tool: without a word, by SIGPIPE or SIGINT.
The offline ones import nothing of the service they do not need (verify-pack: ``cryptography``
alone, no Flask, no Redis).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
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
DEFAULT_URL = "http://127.0.0.1:3001"  # app.client's, spelled here: verify-pack imports no client

_ENVIRONMENT = """\
environment:
  RUN_REGISTRY_SERVICE_URL  the service, when --url is not given (default http://127.0.0.1:3001)
  RUN_REGISTRY_KEY          the secret of an API key, when --key is not given (run-registry new-key
                            makes one); it is sent as Authorization: Bearer, never in a URL"""
_SERVICE_URL_ONLY = """\
environment:
  RUN_REGISTRY_SERVICE_URL  the service, when --url is not given (default http://127.0.0.1:3001)"""
_OVERVIEW = f"""\
examples:
  RUN=$(run-registry lookup pricing-v1 42)         get or start a run; its runId
  run-registry lookup pricing-v1 7 --watch         ... and watch its events as they come
  run-registry status "$RUN"                       its status, count, digest, determinism
  run-registry events "$RUN" | head -c 300         its transcript, JSON
  run-registry verify "$RUN"                       exit 0 if it reproduces byte for byte
  run-registry snapshot "$RUN" -o pack.zip         its signed evidence pack
  run-registry signing-keys -o keys.json           the keys that check it, then offline:
  run-registry verify-pack pack.zip --public-key keys.json
  run-registry check-engine myengine:Engine        is an engine fit, and what is its hash?

{_ENVIRONMENT}

exit status:
  0 done, 1 refused or failed (one line on standard error), 2 a usage error. A reader that
  closes the pipe (| head) ends a command by SIGPIPE, Ctrl-C by SIGINT, without a word, as
  they end cat or grep: a shell says 141 and 130; a loop that was interrupted stops."""
# Each command's help ends with examples of it, and an online one's with the variables it reads.
_EXAMPLES = {
    "lookup": """\
  run-registry lookup pricing-v1 42                 print the runId (start the run if there is none)
  RUN=$(run-registry lookup pricing-v1 42)          keep it for the other commands
  run-registry lookup pricing-v1 7 --watch          then print each event as it comes, to the end
  run-registry lookup pricing-v1 42 --url https://registry.example.com""",
    "status": """\
  run-registry status "$RUN"                        status, count, eventsSha256, determinism
  run-registry status "$RUN" | awk '$1 == "status" {print $2}'   done, running or failed""",
    "events": """\
  run-registry events "$RUN" > transcript.json      the whole transcript (waits while it runs)
  run-registry events "$RUN" | head -c 300""",
    "snapshot": """\
  run-registry snapshot "$RUN" -o pack.zip          then check it offline:
  run-registry signing-keys -o keys.json
  run-registry verify-pack pack.zip --public-key keys.json""",
    "verify": """\
  run-registry verify "$RUN"                        the verdict (JSON); exit 0 if it reproduces
  run-registry verify "$RUN" > /dev/null || echo "$RUN does not reproduce" >&2""",
    "compare": """\
  run-registry compare pricing-v1 42 pricing-v2 42  the diff of two runs (each looked up)""",
    "signing-keys": """\
  run-registry signing-keys                         print the keys (JSON)
  run-registry signing-keys -o keys.json            save them for verify-pack --public-key
  run-registry signing-keys --url https://registry.example.com -o keys.json""",
    "new-key": """\
  run-registry new-key ci read+run                  a key that may read and start runs""",
    "new-signing-key": """\
  run-registry new-signing-key /etc/run-registry/signing-key.pem""",
    "verify-pack": """\
  run-registry signing-keys -o keys.json            once, from a service you trust
  run-registry verify-pack pack.zip --public-key keys.json""",
    "check-engine": """\
  run-registry check-engine myengine:Engine         a Python engine (module:attribute)
  run-registry check-engine 'command:node engine.js'
  run-registry check-engine http://127.0.0.1:8080   an HTTP engine""",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions wrapped to the terminal, as argparse does; an epilog (examples, variables,
    text laid out in lines) kept as it is written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse's, but a usage error is one line, as every failure of this command is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status. A reader that has closed standard output, or Ctrl-C, ends
    it as either ends any Unix tool: quietly, by the signal (see ``_end_by``)."""
    try:
        try:
            return _command(argv)
        finally:
            # The last of the output is written here, where a reader gone is caught, and not at
            # the interpreter's exit; what was printed before a Ctrl-C is kept (in a file, a pipe).
            sys.stdout.flush()
    except BrokenPipeError:
        _end_by(signal.SIGPIPE)
    except KeyboardInterrupt:
        _end_by(signal.SIGINT)


def _end_by(signum: signal.Signals) -> NoReturn:
    """End by ``signum``'s default action, as cat, grep or yes end: no traceback, no message, a
    shell's status 128 + the signal (141 for SIGPIPE, 130 for SIGINT), and ``set -o pipefail``
    sees it. By the signal rather than an exit status: bash runs on after a child that exits
    with 130 (it takes the child to have handled Ctrl-C), but stops a loop whose child Ctrl-C ended."""
    # What is left in the buffer goes nowhere: else Python's own exit would write it, and complain.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # only if the signal is blocked: the status a shell would have shown


def _command(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "new-key":
        return _new_key(args.key_id, args.scopes)
    if args.command == "new-signing-key":
        return _new_signing_key(args.file)
    if args.command == "verify-pack":
        return _verify_pack(args.pack, args.public_key)
    if args.command == "check-engine":
        return _check_engine(args.spec, args.scenario, args.seed, args.timeout)
    return _online(args)


def _parser() -> _Parser:
    parser = _Parser(prog="run-registry", description="The Run Registry's command line.", epilog=_OVERVIEW)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=_Parser)
    address = _Parser(add_help=False)
    address.add_argument("--url", help=f"the service (default: RUN_REGISTRY_SERVICE_URL, else {DEFAULT_URL})")
    credentials = _Parser(add_help=False)
    credentials.add_argument("--key", default=os.environ.get("RUN_REGISTRY_KEY"), metavar="secret",
                             help="the secret of an API key (default: RUN_REGISTRY_KEY); never put it in a URL")
    patience = _Parser(add_help=False)
    patience.add_argument("--wait", type=float, default=600.0, metavar="seconds",
                          help="how long to keep asking about a run that is still running (default 600)")
    online = [address, credentials, patience]

    def command(name: str, help: str, description: str, parents: Sequence[_Parser] = ()) -> _Parser:
        epilog = f"examples:\n{_EXAMPLES[name]}"
        if address in parents:
            epilog += "\n\n" + (_ENVIRONMENT if credentials in parents else _SERVICE_URL_ONLY)
        made: _Parser = commands.add_parser(name, parents=parents, help=help, description=description, epilog=epilog)
        made.set_defaults(usage_error=made.error)  # for what is checked once parsed (--url, whence it came)
        return made

    lookup = command("lookup", "look a run up (get or start it); print its runId",
                     "Print the runId of scenarioId and seed, starting the run if the registry has none. --watch"
                     " prints its events as they come.", online)
    lookup.add_argument("scenario_id", metavar="scenarioId")
    lookup.add_argument("seed")
    lookup.add_argument("--watch", action="store_true", help="then stream its events, live, to the run's end")
    status = command("status", "print a run's status, count, and once done its eventsSha256 and determinism",
                     "Print the run's status (running, done or failed), its count of events, and once it is done"
                     " its eventsSha256 and determinism; a failed run's error. Exit 0 for a run done or running,"
                     " 1 for a failed run or one the service does not know.", [address, credentials])
    status.add_argument("run_id", metavar="runId")
    for name, text in (("events", "print a done run's transcript (JSON)"),
                       ("verify", "execute a run again; exit 0 if its transcript reproduces byte for byte")):
        command(name, text, text[0].upper() + text[1:] + ".", online).add_argument("run_id", metavar="runId")
    snapshot = command("snapshot", "save a done run's signed evidence pack",
                       "Save the run's ZIP evidence pack (check it with verify-pack).", online)
    snapshot.add_argument("run_id", metavar="runId")
    snapshot.add_argument("-o", "--output", required=True, metavar="file")
    snapshot.add_argument("--force", action="store_true", help="replace the file if it exists")
    compare = command("compare", "compare two runs (each looked up)",
                      "Look both up (get or start) and print their diff (POST /compare).", online)
    for side in ("left", "right"):
        compare.add_argument(f"{side}_scenario", metavar=f"{side}ScenarioId")
        compare.add_argument(f"{side}_seed", metavar=f"{side}Seed")
    keys = command("signing-keys", "print or save the public keys that check evidence packs (no key needed)",
                   "Print the service's public signing keys (GET /signing-keys, JSON: the key in use first, then"
                   " retired ones), or save them to a file for verify-pack --public-key. Public keys are public:"
                   " no API key is sent.", [address])
    keys.add_argument("-o", "--output", metavar="file", help="save the JSON to a new file rather than print it")
    keys.add_argument("--force", action="store_true", help="replace the file if it exists")
    make_key = command(
        "new-key", "print a new secret and its RUN_REGISTRY_API_KEYS entry",
        "Print a new secret (give it to the key's holder) and its entry (give that to the service: it holds the"
        " secret's SHA-256 only).",
    )
    make_key.add_argument("key_id", metavar="keyId", help="1-64 characters of A-Z a-z 0-9 . _ -")
    make_key.add_argument("scopes", help="one or more of read, run, ops joined by +, such as read+run")
    signing = command(
        "new-signing-key", "write a new Ed25519 signing key (PKCS#8 PEM, readable by you alone) to a file",
        "Write a new evidence signing key to a new file, mode 0600, for RUN_REGISTRY_SIGNING_KEY (a fleet on Redis"
        " needs one: the registry never keeps a key). Refuses to overwrite a file.",
    )
    signing.add_argument("file")
    check = command(
        "verify-pack", "check an evidence pack offline against the service's public key",
        "Check a snapshot ZIP with nothing but the public key: its attestation is signed by the key, every file"
        " is the one the signature covers, and nothing is missing or added. Exits 0 for a genuine pack, 1 (saying"
        " why) for any other.",
    )
    check.add_argument("pack", help="the pack, as GET /runs/<runId>/snapshot gave it")
    keys_file = check.add_mutually_exclusive_group(required=True)
    keys_file.add_argument("--public-key", metavar="keys",
                           help="PEM public key(s), or GET /signing-keys's JSON saved to a file (run-registry"
                                " signing-keys -o keys.json): any of them may sign")
    # Its old spelling, from before --key meant the API secret in every other command: kept
    # working for the scripts that use it, out of the help.
    keys_file.add_argument("--key", dest="public_key", help=argparse.SUPPRESS)
    engine = command(
        "check-engine", "run an engine twice, apart: is it well-formed, deterministic, and what hash?",
        "Run the engine twice, each in a process of its own; check every event is one the service records and"
        " that both transcripts are byte-identical; print the engineCodeHash the service would give it. Exit 0"
        " only if all holds. Nothing is started but the engine.",
    )
    engine.add_argument("spec", metavar="engine", help="as RUN_REGISTRY_ENGINE takes it: module:attribute,"
                                                      " command:<command line>, http(s)://... or openai:<base URL>")
    engine.add_argument("--scenario", metavar="scenarioId",
                        help="default: the first of an LLM engine's scenarios, else check-engine")
    engine.add_argument("--seed", type=int, default=42)
    engine.add_argument("--timeout", type=float, default=60.0, metavar="seconds", help="for each execution")
    return parser


def _online(args: argparse.Namespace) -> int:
    """The commands that ask a running service: each a request or two of its HTTP API."""
    from app.client import PENDING_DEADLINE_S
    from app.client import Service
    from app.client import ServiceError
    from app.client import url_problem

    url, whence = (args.url, "--url") if args.url is not None else (
        os.environ.get("RUN_REGISTRY_SERVICE_URL") or DEFAULT_URL, "RUN_REGISTRY_SERVICE_URL")
    problem = url_problem(url)
    if problem:
        args.usage_error(f"{whence} {terminal_safe(url)} {problem}")
    key = getattr(args, "key", None)  # signing-keys has none to send: public keys are public
    service = Service(url, key, pending_deadline_s=getattr(args, "wait", PENDING_DEADLINE_S))
    try:
        if args.command == "lookup":
            return _lookup(service, args.scenario_id, args.seed, args.watch)
        if args.command == "status":
            return _status(service, args.run_id)
        if args.command == "signing-keys":
            return _signing_keys(service, args.output, args.force)
        if args.command == "events":
            print(terminal_safe(service.done(f"/runs/{_path(args.run_id)}/events").body.decode("utf-8", "replace")))
            return 0
        if args.command == "snapshot":
            answer = service.done(f"/runs/{_path(args.run_id)}/snapshot")
            if answer.headers.get("Content-Type") != "application/zip" or not answer.body.startswith(b"PK\x03\x04"):
                raise ServiceError("the answer is not a ZIP evidence pack; nothing was written")
            _write_new(args.output, answer.body, args.force)
            print(f"{terminal_safe(args.output)}: {len(answer.body):,} bytes (check it: run-registry verify-pack"
                  f" {terminal_safe(args.output)} --public-key <keys>)")
            return 0
        if args.command == "verify":
            verdict = service.ask("POST", f"/runs/{_path(args.run_id)}/verify").json_object()
            print(json.dumps(verdict, indent=2, ensure_ascii=True))  # ASCII: nothing a terminal acts on
            return 0 if verdict.get("reproducible") is True else 1
        sides = {side: {"scenarioId": getattr(args, f"{side}_scenario"), "seed": getattr(args, f"{side}_seed")}
                 for side in ("left", "right")}
        compared = service.ask("POST", "/compare", sides, headers={"Prefer": "wait=25"}).json()
        print(json.dumps(compared, indent=2, ensure_ascii=True))
        return 0
    except ServiceError as err:
        print(f"run-registry: {args.command}: {terminal_safe(str(err))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise  # standard output's reader has gone: not this command's failure (main ends it quietly)
    except OSError as err:
        print(f"run-registry: {args.command}: {terminal_safe(str(err.filename))}: {err.strerror}", file=sys.stderr)
        return 1


def _lookup(service: Service, scenario_id: str, seed: str, watch: bool) -> int:
    from app.client import ServiceError

    answer = service.lookup(scenario_id, seed, wait=not watch)
    run_id = answer.json_object().get("runId")
    if not isinstance(run_id, str):
        raise ServiceError("the lookup's answer names no runId")
    print(terminal_safe(run_id), flush=True)
    if not watch:
        return 0
    # A run done already (200, not 202) ends at its count: the stream says it has all at its last
    # event, with nothing asked again of a service that may be gone by then.
    count = _done_count(service, run_id) if answer.status == 200 else None
    for event in service.events(run_id, count):
        if event.type == "error":  # the service's end of a failed run (engines may not send this type)
            print(terminal_safe(f"run-registry: lookup: run {run_id} failed: {_error_message(event.data)}"),
                  file=sys.stderr)
            return 1
        print(terminal_safe(f"{event.id} {event.type} {event.data}"), flush=True)
    return 0


def _done_count(service: Service, run_id: str) -> int | None:
    """The run's count of events if it is done (its transcript then ends there), else ``None``."""
    run = service.ask("GET", f"/runs/{_path(run_id)}").json_object()
    count = run.get("count")
    return count if run.get("status") == "done" and isinstance(count, int) else None


def _status(service: Service, run_id: str) -> int:
    """GET /runs/<runId>, a line a field: 0 for a run done or running (it is no failure, yet), 1 for
    a failed one, or for a status this command does not know."""
    run = service.ask("GET", f"/runs/{_path(run_id)}").json_object()
    status = run.get("status")
    rows = [("runId", run.get("runId", run_id)), ("status", status), ("scenarioId", run.get("scenarioId")),
            ("seed", run.get("seed")), ("count", run.get("count"))]
    if status == "done":
        rows += [("eventsSha256", run.get("eventsSha256")), ("determinism", _determinism(run.get("determinism")))]
    if status == "failed":
        error = run.get("error")
        if isinstance(error, dict):
            rows.append(("error", f"{error.get('type')}: {error.get('message')}"))
    for name, value in rows:
        # One line a field, whatever a server put in it: its line breaks and tabs are escaped too.
        shown = terminal_safe(str(value)).replace("\n", "\\n").replace("\t", "\\t")
        print(f"{name:<13} {shown}")
    return 0 if status in ("done", "running") else 1


def _determinism(ledger: object) -> str:
    """The run's key in the determinism ledger, in one line: its status, checks and divergences."""
    if not isinstance(ledger, dict):
        return str(ledger)
    reference = ledger.get("reference")
    referred = f"; reference {reference.get('runId')}" if isinstance(reference, dict) else ""
    return f"{ledger.get('status')} ({ledger.get('checks')} checks, {ledger.get('divergences')} divergences{referred})"


def _signing_keys(service: Service, output: str | None, force: bool) -> int:
    """GET /signing-keys, printed, or saved whole to a new file once it is known to hold keys that
    verify-pack takes (a body that is not is refused, and nothing is written)."""
    from app.client import ServiceError

    answer = service.ask("GET", "/signing-keys")
    unwritten = "; nothing was written" if output else ""
    if not answer.body.lstrip().startswith(b"{"):  # PEM would do for verify-pack, but the service sends JSON
        raise ServiceError(f"the answer is not the JSON of GET /signing-keys{unwritten}")
    try:
        keys = _keys_in(answer.body, "the answer")
    except ValueError as err:
        raise ServiceError(f"{err}{unwritten}") from None
    if output is None:
        print(terminal_safe(answer.body.decode("utf-8", "replace")))
        return 0
    _write_new(output, answer.body, force)
    retired = f", then {len(keys) - 1} retired" if len(keys) > 1 else ""
    print(f"{terminal_safe(output)}: the service's public keys, keyId {keys[0].key_id} in use{retired} (check a pack:"
          f" run-registry verify-pack <pack.zip> --public-key {terminal_safe(output)})")
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
    return _keys_in(_read(path, 1 << 20), path)


def _keys_in(text: bytes, where: str) -> list[PublicKey]:
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


if __name__ == "__main__":
    sys.exit(main())
