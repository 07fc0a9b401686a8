"""The commands that ask a running service (lookup, status, events, snapshot, verify, compare,
signing-keys): each a request or two of its HTTP API, through ``app.cli.client``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from app.cli.client import DEFAULT_URL
from app.cli.client import PENDING_DEADLINE_S
from app.cli.client import Service
from app.cli.client import ServiceError
from app.cli.client import url_problem
from app.cli.offline import keys_in
from app.cli.terminal import terminal_safe
from app.cli.terminal import write_new


def run_online(args: argparse.Namespace) -> int:
    """The commands that ask a running service: each a request or two of its HTTP API."""
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
            write_new(args.output, answer.body, args.force)
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
    answer = service.ask("GET", "/signing-keys")
    unwritten = "; nothing was written" if output else ""
    if not answer.body.lstrip().startswith(b"{"):  # PEM would do for verify-pack, but the service sends JSON
        raise ServiceError(f"the answer is not the JSON of GET /signing-keys{unwritten}")
    try:
        keys = keys_in(answer.body, "the answer")
    except ValueError as err:
        raise ServiceError(f"{err}{unwritten}") from None
    if output is None:
        print(terminal_safe(answer.body.decode("utf-8", "replace")))
        return 0
    write_new(output, answer.body, force)
    retired = f", then {len(keys) - 1} retired" if len(keys) > 1 else ""
    print(f"{terminal_safe(output)}: the service's public keys, keyId {keys[0].key_id} in use{retired} (check a pack:"
          f" run-registry verify-pack <pack.zip> --public-key {terminal_safe(output)})")
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
