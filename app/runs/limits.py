"""How many engine executions one client may cause a minute (``RUN_REGISTRY_NEW_RUNS_PER_MINUTE``).

The check belongs inside the service, not in front of a route: whether a lookup or a compare
starts a run is known only once the registry has missed, and hits must never count. So this
uses the ``limits`` library (the one under Flask-Limiter) directly, with its moving window:
exact, so a client never gets twice its share across a window boundary.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import time

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.storage import Storage
from limits.strategies import MovingWindowRateLimiter

from app.errors import RateLimited
from app.registry.base import RegistryUnavailable


class NewRunLimit:
    """A per-client budget of engine executions a minute; ``per_minute=0`` turns it off."""

    def __init__(self, per_minute: int, storage: Storage | None = None) -> None:
        self._item = RateLimitItemPerMinute(per_minute) if per_minute else None
        self._limiter = MovingWindowRateLimiter(storage or MemoryStorage())

    def admit(self, client: str, cost: int = 1) -> None:
        """Count ``cost`` executions for ``client`` (a caller's limit key: its keyId, or its network),
        all or none.

        :raises RateLimited: it has not that many left this minute; nothing was counted.
        :raises RegistryUnavailable: the shared storage does not answer.
        """
        if self._item is None:
            return
        try:
            if self._limiter.hit(self._item, client, cost=cost):
                return
            reset_at = self._limiter.get_window_stats(self._item, client).reset_time
        except StorageError as err:
            raise RegistryUnavailable(f"limits storage: {err.storage_error.__class__.__name__}") from err
        limit = self._item.amount
        who = "This key" if client.startswith("key:") else "This client"  # Caller.limit_key
        raise RateLimited(
            f"{who} may start {limit} engine executions a minute; retry in a moment or use cached runs",
            # The window admits again only once strictly past its reset: a whole second later.
            retry_after=math.floor(reset_at - time.time()) + 1,
            client=client,
        )


def client_network(address: str) -> str:
    """What one client is, for the limits: an IPv4 address; an IPv6 address' /64, the least a host
    or a site is given (each of its 2**64 addresses is otherwise a budget of its own); all of
    loopback (127.0.0.0/8, ::1) as one; an IPv4 address mapped into IPv6 as that IPv4 address.
    Anything else (not an address, as a misconfigured proxy may forward) counts as itself.
    """
    if len(address) > 64:  # no address is this long: counted, but not kept in the memo below
        return address[:64]
    return _network(address)


@functools.lru_cache(maxsize=4096)
def _network(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))
