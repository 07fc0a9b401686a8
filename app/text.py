"""Echoing client or operator input back in a message, safely."""

from __future__ import annotations


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters replaced by '?' and its length bounded."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return shown + ("..." if len(text) > limit else "")
