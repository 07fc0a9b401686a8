"""runIds: ``run_<scenarioId>_<seed>_<createdAt>``, never two runs with one."""

from __future__ import annotations

from collections.abc import Callable

from app.models import RunKey


class RunIdClock:
    """Creation times for one process's registry: from now, never one already given, never one
    whose runId is ``taken``.

    The clock may stand still, or a run fail or expire and its key run again within its
    millisecond: so a runId that once named a run never names another one here. Not
    thread-safe: the registry calls it under its own lock.
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self, key: RunKey, now_ms: int, taken: Callable[[str], bool]) -> str:
        created_at = max(now_ms, self._last + 1)
        while taken(run_id := key.run_id(created_at)):
            created_at += 1
        self._last = created_at
        return run_id
