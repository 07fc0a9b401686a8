"""``run-registry``: the service's command line (installed as a console script by ``make run``).

    run-registry new-key <keyId> <scopes>     a new secret and its RUN_REGISTRY_API_KEYS entry

Every command exits non-zero with one line on standard error when it fails.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from app.access import SCOPES
from app.access import KeyEntryError
from app.access import new_key


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
    make_key.add_argument("scopes", help=f"one or more of {', '.join(SCOPES)} joined by +, such as read+run")
    args = parser.parse_args(argv)
    if args.command == "new-key":
        return _new_key(args.key_id, args.scopes)
    return 2  # argparse refuses unknown commands before this


def _new_key(key_id: str, scopes: str) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
