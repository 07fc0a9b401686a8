"""Engines of every kind, and how the service picks one (``RUN_REGISTRY_ENGINE``).

``load_engine`` is the only place that knows the kinds: everything else holds an ``Engine``.
"""

from __future__ import annotations

import re

from app.config import DEFAULT_ENGINE
from app.config import ConfigError
from app.config import Settings
from app.engine.base import Engine
from app.engine.base import ScenarioEngine
from app.engine.python import EngineLoadError
from app.engine.python import InProcessEngine
from app.engine.python import import_engine

# The kinds named by a prefix; anything else is a Python engine's module:attribute.
_PREFIXED_KINDS = ("command:", "http://", "https://", "openai:")
_DOTTED_NAME = re.compile(r"\w+(?:\.\w+)*")  # no empty part: "inventory:Engine." has no attribute ""


def load_engine(settings: Settings) -> Engine:
    """The engine ``settings.engine`` names: ``module:attribute`` (a Python engine),
    ``command:<command line>`` (a process engine), ``http(s)://...`` (an HTTP engine), or
    ``openai:<base URL>`` (an OpenAI-compatible LLM server, with ``RUN_REGISTRY_SCENARIOS``).

    :raises ConfigError: it cannot be loaded, started or described; the message says why, in one line.
    """
    spec = settings.engine
    try:
        if spec.startswith("command:"):
            from app.engine.process import ProcessEngine

            return ProcessEngine(spec, dict(settings.engine_environment), settings.engine_root)
        if spec.startswith(("http://", "https://")):
            from app.engine.http import HttpEngine

            return HttpEngine(spec, settings.engine_token, settings.engine_describe_s, settings.engine_timeout_s)
        if spec.startswith("openai:"):
            from app.engine.openai import OpenAIEngine

            return OpenAIEngine(spec, settings.scenarios_path, settings.engine_token, settings.engine_describe_s,
                                settings.engine_timeout_s)
        problem = spec_problem(spec)
        if problem:
            raise EngineLoadError(problem)
        return InProcessEngine(import_engine(spec), spec)
    except EngineLoadError as err:
        raise ConfigError(f"RUN_REGISTRY_ENGINE {spec}: {err}") from None


def as_engine(engine: Engine | ScenarioEngine) -> Engine:
    """An engine as the service runs it: a Python engine object is run in this process."""
    return engine if isinstance(engine, Engine) else InProcessEngine(engine)


def spec_problem(spec: str) -> str | None:
    """What keeps ``spec`` from naming an engine by its form alone (before anything is imported or
    asked), with the forms there are; ``None`` if it has one. ``inventory`` is a module without
    an attribute: importing it would say "has no attribute ''", which helps no one."""
    if spec.startswith(_PREFIXED_KINDS):
        return None
    module, colon, attribute = spec.partition(":")
    if not colon:
        wrong = "no :attribute after the module"
    elif not _DOTTED_NAME.fullmatch(module):
        wrong = f"{module!r} is not a module's dotted name"
    elif not _DOTTED_NAME.fullmatch(attribute):
        wrong = f"{attribute!r} is not an attribute's dotted name"
    else:
        return None
    example = f"{module}:Engine" if _DOTTED_NAME.fullmatch(module) else DEFAULT_ENGINE
    return (f"not an engine ({wrong}): name one as module:attribute (a Python engine, such as {example}),"
            " command:<command line>, http(s)://... or openai:<base URL>")
