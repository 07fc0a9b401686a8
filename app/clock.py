"""Wall-clock time in epoch milliseconds, looked up on every call so freezegun can move it."""

from __future__ import annotations

import time


def now_ms() -> int:
    """The current time in whole epoch milliseconds."""
    return time.time_ns() // 1_000_000
