"""The transcript as CSV, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io
import unicodedata

from app.engine.base import Event
from app.models import canonical_json

HEADER = ("position", "type", "tokenIndex", "text", "data")
# A cell a spreadsheet reads as a formula or a DDE call starts with one of these (OWASP's "CSV
# Injection" list, and defusedcsv's "|" and "%"); tab and carriage return are on OWASP's list too.
_FORMULA_STARTS = frozenset("=+-@|%\t\r")
# What spreadsheets skip before they look at that first character: spaces of every kind, line
# breaks, control and format characters (zero-width spaces and joiners among them).
_SKIPPED_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def events_csv(events: list[Event]) -> bytes:
    """One row per event: position, type, tokenIndex, text, data as compact JSON; UTF-8, CRLF."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(HEADER)
    for position, event in enumerate(events, start=1):
        data = event["data"]
        token_index = data.get("tokenIndex", "")
        writer.writerow((
            position,
            neutralised(event["type"]),
            token_index if isinstance(token_index, int) else neutralised(str(token_index)),
            neutralised(str(data.get("text", ""))),
            neutralised(canonical_json(data).decode("utf-8")),
        ))
    return out.getvalue().encode("utf-8")


def neutralised(cell: str) -> str:
    """Prefix a quote to a cell a spreadsheet could evaluate, whatever it puts first.

    Written here rather than with defusedcsv: defusedcsv looks at the first character only, so
    ``"\\u00a0=1+1"``, ``"\\n=1"`` or ``"\\u3000@x"`` pass it, and it does not know the full-width
    look-alikes (``\\uff1d``, a full-width '=') that spreadsheets fold to their ASCII forms (NFKC).
    """
    return "'" + cell if _reads_as_formula(cell) else cell


def _reads_as_formula(cell: str) -> bool:
    if not cell:
        return False
    if cell[0] in _FORMULA_STARTS:
        return True
    for char in cell:
        if unicodedata.category(char) in _SKIPPED_CATEGORIES:
            continue
        folded = unicodedata.normalize("NFKC", char)
        return folded[:1] in _FORMULA_STARTS or char == "\u2212"  # U+2212 MINUS SIGN
    return False
