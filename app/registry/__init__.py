"""Registry backends; ``make_registry`` is the only place that knows their names."""

from __future__ import annotations

from app.config import Settings
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.registry.memory import MemoryRegistry

__all__ = ["MemoryRegistry", "Registry", "RegistryUnavailable", "make_registry"]


def make_registry(settings: Settings) -> Registry:
    """Build the backend ``RUN_REGISTRY_URL`` names."""
    return MemoryRegistry(ttl_ms=settings.ttl_ms, max_entries=settings.max_entries)
