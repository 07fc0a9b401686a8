"""Python engines (``module:attribute``): a ``ScenarioEngine`` run in the service's own process."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

from app.engine.base import Engine
from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.base import Identity
from app.engine.base import ScenarioEngine
from app.engine.base import StderrSink
from app.engine.events import MalformedEvent
from app.engine.events import encoded_event
from app.engine.identity import python_source_digest
from app.models import EncodedEvent
from app.text import printable

# An exception's words in a run's error: the class and as much of its message as a client needs.
MAX_REASON = 200


class EngineLoadError(Exception):
    """``module:attribute`` does not name an engine; the message says why, in one line."""


class InProcessEngine(Engine):
    """A Python engine, run on an engine thread of this process. Its identity is its source files."""

    kind = "python"

    def __init__(self, engine: ScenarioEngine, spec: str | None = None) -> None:
        super().__init__(spec or f"{type(engine).__module__}:{type(engine).__qualname__}")
        self.engine = engine
        self._identity = Identity(engine.name, engine.version, python_source_digest(engine))

    def identity(self) -> Identity:
        return self._identity

    def run(self, scenario_id: str, seed: int, on_stderr: StderrSink | None = None) -> EngineRun:
        return _PythonRun(self.engine, scenario_id, seed)


class _PythonRun(EngineRun):
    """The engine's iterable, each event checked and encoded; its exception becomes the run's reason."""

    def __init__(self, engine: ScenarioEngine, scenario_id: str, seed: int) -> None:
        self._engine = engine
        self._scenario_id = scenario_id
        self._seed = seed

    def __iter__(self) -> Iterator[EncodedEvent]:
        position = 0
        try:
            for position, event in enumerate(self._engine.run(self._scenario_id, self._seed), start=1):
                try:
                    yield encoded_event(event)
                except MalformedEvent as malformed:
                    raise EngineError(f"event {position} is not one the service records: {malformed}") from None
        except EngineError:
            raise
        except Exception as err:  # a plugin's failure of any kind is the run's, with its reason
            raise EngineError(exception_reason(err)) from err
        if position == 0:
            raise EngineError("it yielded no events")


def exception_reason(err: BaseException) -> str:
    """``ValueError: the message``, printable and bounded: what a client is told of an exception."""
    message = " ".join(str(err).split())
    return printable(f"{type(err).__name__}: {message}" if message else type(err).__name__, limit=MAX_REASON)


def import_engine(spec: str) -> ScenarioEngine:
    """Import ``module:attribute``: an engine, or a class or factory that makes one.

    :raises EngineLoadError: the module or attribute is missing, or the result is no engine.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise EngineLoadError(f"{spec!r} cannot be imported: {err}") from err
    # A class also has name, version and run, so it passes the protocol check: build it.
    engine = target
    if isinstance(target, type) or (callable(target) and not isinstance(target, ScenarioEngine)):
        try:
            engine = target()
        except TypeError as err:
            raise EngineLoadError(f"{spec!r} cannot be called without arguments: {err}") from err
    if not isinstance(engine, ScenarioEngine):
        raise EngineLoadError(f"{spec!r} is not an engine (name, version, run)")
    return engine
