"""Scenario engines and how the service picks one."""

from __future__ import annotations

import importlib

from app.config import ConfigError
from app.engine.base import Engine


def load_engine(spec: str) -> Engine:
    """Import ``module:attribute``: an engine, or a class or factory that makes one.

    :raises ConfigError: the module or attribute is missing, or the result is no engine.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"RUN_REGISTRY_ENGINE {spec!r} cannot be imported: {err}") from err
    # A class also has name, version and run, so it passes the protocol check: build it.
    engine = target
    if isinstance(target, type) or (callable(target) and not isinstance(target, Engine)):
        try:
            engine = target()
        except TypeError as err:
            raise ConfigError(f"RUN_REGISTRY_ENGINE {spec!r} cannot be called without arguments: {err}") from err
    if not isinstance(engine, Engine):
        raise ConfigError(f"RUN_REGISTRY_ENGINE {spec!r} is not an engine (name, version, run)")
    return engine
