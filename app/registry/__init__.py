"""Registry backends; ``make_registry`` is the only place that knows their names."""

from __future__ import annotations

from limits.storage import MemoryStorage
from limits.storage import RedisStorage
from limits.storage import Storage

from app.config import Settings
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.registry.memory import MemoryRegistry

__all__ = ["MemoryRegistry", "Registry", "RegistryUnavailable", "make_limit_storage", "make_registry"]


def make_registry(settings: Settings) -> Registry:
    """Build the backend ``RUN_REGISTRY_URL`` names (validated by ``load_settings``). Redis's module
    is imported only for it: redis-py (and its asyncio client) is a seventh of a process's start."""
    if settings.shared_registry:
        from app.registry.redis_registry import RedisRegistry

        return RedisRegistry(
            settings.registry_url,
            ttl_ms=settings.ttl_ms,
            max_entries=settings.max_entries,
            timeout_ms=settings.redis_timeout_ms,
            prefix=settings.redis_prefix,
            lease_ms=round(settings.lease_s * 1000),
            ledger_ms=settings.ledger_ms,
            ledger_keys=settings.ledger_max_keys,
        )
    return MemoryRegistry(settings.ttl_ms, settings.max_entries, settings.ledger_ms, settings.ledger_max_keys)


def make_limit_storage(settings: Settings) -> Storage:
    """Where the new-run limits count: this process, or the shared Redis under a prefix of
    their own, so that the limit holds across the fleet."""
    if settings.shared_registry:
        from app.registry.redis_connection import redis_pool

        return RedisStorage(
            settings.registry_url,
            key_prefix=f"{settings.redis_prefix}limits",
            wrap_exceptions=True,
            connection_pool=redis_pool(settings.registry_url, settings.redis_timeout_ms),
        )
    return MemoryStorage()
