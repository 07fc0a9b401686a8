"""The engine interface: what the service needs from an engine of any kind.

Two contracts live here. ``ScenarioEngine`` is what a team writes in Python (docs/engines.md):
``name``, ``version`` and ``run``. ``Engine`` is what the service runs: every kind (a Python
engine in this process, a process speaking ``run-registry-engine/1``, an HTTP engine, an
OpenAI-compatible LLM server) is an adapter behind it, turning its own wire into the same
encoded events, so the runner, the recorder, the ledger and the service never learn which kind
they run (../shared/STYLE.md section 10).
"""

from __future__ import annotations

from abc import ABC
from abc import abstractmethod
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from typing import ClassVar
from typing import Protocol
from typing import runtime_checkable

from app.models import EncodedEvent

Event = dict[str, Any]  # {"type": str, "data": dict}
StderrSink = Callable[[str], None]


@runtime_checkable
class ScenarioEngine(Protocol):
    """A deterministic scenario engine written in Python.

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


@dataclass(frozen=True)
class Identity:
    """What an engine is: the name and version it gives, and a digest of what it can be checked
    against (its files, its executable, a digest it publishes). engineCodeHash is made of it."""

    name: str
    version: str
    digest: str


class EngineError(Exception):
    """A run failed for a reason of the engine's own; the message says why, in words fit for a
    client (printable, bounded): "exited with status 3", "line 4 is not an event: ..."."""


class EngineUnavailable(Exception):
    """The engine cannot take a run now (a remote engine that does not answer); nothing is started."""


class UnknownScenario(Exception):
    """The engine has no such scenario (an LLM engine's scenarios file does not name it)."""


class EngineRun(ABC):
    """One execution: its encoded events, in order, as the engine makes them.

    Iterated on an engine thread; ``cancel`` and ``last_words`` may be called from any thread.
    """

    @abstractmethod
    def __iter__(self) -> Iterator[EncodedEvent]:
        """:raises EngineError: the engine failed; the message says why."""

    def cancel(self) -> None:  # noqa: B027 - a run of an engine in this process cannot be stopped
        """Stop the execution: nobody records it any more (the timeout, a run given up, shutdown)."""

    def end(self) -> None:  # noqa: B027 - most runs leave nothing behind
        """Called once, last, on the engine thread: stop and release whatever of it remains."""

    def last_words(self) -> str | None:
        """The last line the engine wrote to its standard error, if it has one (printable, bounded)."""
        return None


class Engine(ABC):
    """An engine of any kind, as the service runs it."""

    kind: ClassVar[str]
    # Whether the engine's identity comes from elsewhere, and may change while the service runs
    # (an HTTP engine or an LLM server redeployed): it is described again from time to time.
    remote: ClassVar[bool] = False
    # Whether it runs only the scenarios it names (an LLM engine's file): a lookup of another is
    # refused before anything is looked up or counted.
    names_scenarios: ClassVar[bool] = False

    def __init__(self, spec: str) -> None:
        self.spec = spec  # as RUN_REGISTRY_ENGINE gave it (shown in messages: it holds no secret)

    @abstractmethod
    def identity(self) -> Identity:
        """What the engine is now, as last described: cheap, asked on every lookup.

        :raises EngineUnavailable: it has never been described (a remote engine not reached yet).
        """

    def ready(self, fresh: bool = False) -> Identity:
        """The identity, when the engine can take a run now (a remote engine whose last
        description failed is described again first; with ``fresh``, in any case).

        :raises EngineUnavailable: it cannot.
        """
        return self.identity()

    def available(self) -> bool:
        """Cheaply, whether the engine's last word was that it can take runs (a remote engine
        whose last description failed: ``False``). Asked on every lookup: it must not wait."""
        return True

    def check_scenario(self, scenario_id: str) -> None:  # noqa: B027 - most kinds run any scenario
        """:raises UnknownScenario: the engine has no such scenario (before anything is started)."""

    def example_scenario(self) -> str | None:
        """A scenario the engine has, for check-engine to run when none is named (``None``: any will do)."""
        return None

    @abstractmethod
    def run(self, scenario_id: str, seed: int, on_stderr: StderrSink | None = None) -> EngineRun:
        """Start an execution (on the engine thread that will iterate it). ``on_stderr`` hears the
        lines the engine writes to its standard error (bounded per run), from that thread.

        :raises EngineError: it could not be started.
        """

    def close(self) -> None:  # noqa: B027 - most kinds hold nothing to stop
        """Stop every execution in flight and what the engine holds (the service shuts down)."""
