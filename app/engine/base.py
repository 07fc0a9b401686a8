"""The engine interface: what the registry needs from a scenario engine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from typing import Protocol
from typing import runtime_checkable

Event = dict[str, Any]  # {"type": str, "data": dict}


@runtime_checkable
class Engine(Protocol):
    """A deterministic scenario engine.

    ``run`` must return the same events for the same ``(scenario_id, seed)`` on every
    call, process, host and Python version: no clock, no process state, no unseeded
    randomness. Changing its output means bumping ``version``.
    """

    name: str
    version: str

    def run(self, scenario_id: str, seed: int) -> Iterable[Event]:
        """Execute the scenario and yield its events, in order, each as it is made (a list of
        them, returned at the end, works too: its events are then all recorded at once).

        It runs on a thread of its own, so it may compute or block as long as it needs; the
        service records each event as it comes and shows it to live clients.
        """
        ...
