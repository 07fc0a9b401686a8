"""Redis clients of the service: short timeouts, one retry, a pool that waits rather than refuses,
and a connection check that asks the kernel (the registry's, the new-run limit's, the queue's)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.serving.concurrency import readable_now

POOL_CONNECTIONS = 64  # per client and process, for short commands (more wait for one)
BLOCKING_CONNECTIONS = 10_000  # per client and process, for commands that block (one each)


def redis_client_options(timeout_ms: int) -> dict[str, Any]:
    """Connection options of every Redis client of the service.

    Short timeouts and one immediate retry: the retry mends a pooled connection that a Redis
    restart closed; beyond that an outage is a prompt 503, not a hang.
    """
    return {
        "socket_timeout": timeout_ms / 1000,
        "socket_connect_timeout": timeout_ms / 1000,
        "retry": Retry(NoBackoff(), 1),
    }


class _PooledConnection(redis.Connection):
    """A TCP connection whose check at every checkout from the pool ("has it anything unread?")
    asks the kernel directly.

    redis-py asks with ``select.poll()``, which under gevent is gevent's cooperative poll: about
    35 µs a command for a question that never waits (docs/benchmarks.md). Nothing on the socket
    means nothing unread: replies are read whole (RESP2, no pushes), and a connection that fails
    mid-reply is disconnected. Anything there, and redis-py's own check decides.
    """

    def can_read(self, timeout: float = 0) -> bool:
        if timeout == 0 and self._sock is not None and not readable_now(self._sock):
            return False
        return bool(super().can_read(timeout))


def redis_pool(url: str, timeout_ms: int) -> redis.ConnectionPool:
    """The connection pool of a client whose commands are short (the registry's, the limits', the
    queue's): at most POOL_CONNECTIONS, and a command beyond them waits up to the timeout for one.

    Under gevent every request is a greenlet, and a burst of them reaches Redis at once: redis-py's
    own pool refuses the 101st concurrent command (MaxConnectionsError), which made 500 live
    clients of one run get 503s. Commands take well under a millisecond, so waiting is cheap.
    """
    # Plain TCP only: rediss:// and unix:// keep their own connection classes.
    plain = {"connection_class": _PooledConnection} if url.startswith("redis://") else {}
    return redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_CONNECTIONS, timeout=timeout_ms / 1000, **redis_client_options(timeout_ms), **plain
    )


def redis_client(url: str, timeout_ms: int, blocking_read_s: float | None = None) -> redis.Redis:
    """A client of the service. With ``blocking_read_s``, for commands that block that long
    (a follower's XREAD, waiting for a verification's result): one connection per blocked
    command, as many as the runs followed or verified, so none waits behind another.
    """
    if blocking_read_s is None:
        pool = redis_pool(url, timeout_ms)
    else:
        options = {**redis_client_options(timeout_ms), "socket_timeout": blocking_read_s}
        pool = redis.ConnectionPool.from_url(url, max_connections=BLOCKING_CONNECTIONS, **options)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # closing the client closes its pool, as from_url's do
    return client
