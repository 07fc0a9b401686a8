"""runIds: ``run_<scenarioId>_<seed>_<createdAt>``, never two live runs with one."""

from __future__ import annotations

from collections.abc import Callable

from app.models import RunKey


class RunIdReservations:
    """The runIds of runs being built in this process, so that two builds never take one.

    Creation times also never repeat in the process (the clock may stand still, or a run
    expire and its key run again within its millisecond), so a runId that once named a run
    never names another one here. Not thread-safe: the registry calls it under its own lock.
    """

    def __init__(self) -> None:
        self._reserved: set[str] = set()
        self._last_created_at = 0

    def reserve(self, key: RunKey, now_ms: int, taken: Callable[[str], bool]) -> str:
        """The key's runId for the first millisecond from ``now_ms`` (and after the last one
        given) whose runId is neither ``taken`` (by a stored run) nor reserved; reserved until
        ``release``."""
        created_at = max(now_ms, self._last_created_at + 1)
        while (run_id := key.run_id(created_at)) in self._reserved or taken(run_id):
            created_at += 1
        self._last_created_at = created_at
        self._reserved.add(run_id)
        return run_id

    def release(self, run_id: str) -> None:
        self._reserved.discard(run_id)
