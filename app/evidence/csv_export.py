"""The transcript as CSV, safe to open in a spreadsheet."""

from __future__ import annotations

import csv
import io

from app.engine.base import Event
from app.models import canonical_json

HEADER = ("position", "type", "tokenIndex", "text", "data")
# A cell starting with one of these is read as a formula by spreadsheets (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


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
    """Prefix a quote to a cell a spreadsheet would evaluate, also behind leading spaces."""
    return "'" + cell if cell.lstrip(" ").startswith(_FORMULA_STARTS) else cell
