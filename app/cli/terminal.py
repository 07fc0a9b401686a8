"""What the command line writes: text a server or an engine sent, made safe for a terminal;
files written whole, and new unless asked otherwise."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

# What a terminal would act on, or cannot show: C0 and C1 controls, line and paragraph separators,
# and the rest of what is not printable; but for the text's own newlines and tabs.
# Bidirectional overrides and isolates too: they reorder what a terminal shows ("Trojan Source").
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069\ufff9-\ufffb]")


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


def write_new(path: str, data: bytes, force: bool) -> None:
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
