"""Engines of every kind, and how the service picks one (``RUN_REGISTRY_ENGINE``).

``load_engine`` is the only place that knows the kinds: everything else holds an ``Engine``.
"""

from __future__ import annotations

from app.config import ConfigError
from app.config import Settings
from app.engine.base import Engine
from app.engine.base import ScenarioEngine
from app.engine.python import EngineLoadError
from app.engine.python import InProcessEngine
from app.engine.python import import_engine


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
        return InProcessEngine(import_engine(spec), spec)
    except EngineLoadError as err:
        raise ConfigError(f"RUN_REGISTRY_ENGINE {spec}: {err}") from None


def as_engine(engine: Engine | ScenarioEngine) -> Engine:
    """An engine as the service runs it: a Python engine object is run in this process."""
    return engine if isinstance(engine, Engine) else InProcessEngine(engine)
