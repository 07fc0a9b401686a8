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
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import NoReturn

from app.cli.client import DEFAULT_URL
from app.cli.offline import check_engine
from app.cli.offline import new_key
from app.cli.offline import new_signing_key
from app.cli.offline import verify_pack
from app.cli.online import run_online

if TYPE_CHECKING:
    pass

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
        return new_key(args.key_id, args.scopes)
    if args.command == "new-signing-key":
        return new_signing_key(args.file)
    if args.command == "verify-pack":
        return verify_pack(args.pack, args.public_key)
    if args.command == "check-engine":
        return check_engine(args.spec, args.scenario, args.seed, args.timeout)
    return run_online(args)


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


if __name__ == "__main__":
    sys.exit(main())
