"""Registry backends; ``make_registry`` is the only place that knows their names."""

from __future__ import annotations

from app.config import Settings
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.registry.memory import MemoryRegistry
from app.registry.redis_registry import RedisRegistry

__all__ = ["MemoryRegistry", "RedisRegistry", "Registry", "RegistryUnavailable", "make_registry"]


def make_registry(settings: Settings) -> Registry:
    """Build the backend ``RUN_REGISTRY_URL`` names (validated by ``load_settings``)."""
    if settings.shared_registry:
        return RedisRegistry(
            settings.registry_url,
            ttl_ms=settings.ttl_ms,
            max_entries=settings.max_entries,
            timeout_ms=settings.redis_timeout_ms,
            prefix=settings.redis_prefix,
            # Wait for another worker's run as long as an engine may take, and a little more.
            wait_ms=round(settings.engine_timeout_s * 1000) + 5_000,
        )
    return MemoryRegistry(ttl_ms=settings.ttl_ms, max_entries=settings.max_entries)
