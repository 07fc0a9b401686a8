"""Real threads and light tasks, under gunicorn's gevent worker and without it.

Under the gevent worker, ``threading`` is monkey-patched: a ``threading.Thread`` is a greenlet,
cheap, and right for waiting (a writer that records a run, a follower tailing a Redis stream).
An engine computes, and a greenlet that computes stops every other connection of its process,
so engines run on real OS threads: gevent's own pool of native threads, whose results greenlets
wait for cooperatively. Without gevent (tests, ``flask run``) both are ordinary threads.

Patched ``threading`` locks, conditions and events work across a native thread and greenlets
(gevent 20.12 and later), so the two sides hand events to each other through them.
"""

from __future__ import annotations

import functools
import select
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from typing import Protocol


def gevent_active() -> bool:
    """Whether this process runs under gevent's monkey-patching (gunicorn's gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:  # gevent is installed with the service; a bare checkout may lack it
        return False
    return bool(monkey.is_module_patched("threading"))


class RealThreads(Protocol):
    """OS threads for calls that compute; ``submit`` never waits, whatever is running."""

    def submit(self, call: Callable[..., Any], /, *args: Any) -> None: ...


def real_threads(max_threads: int, name: str) -> RealThreads:
    """At most ``max_threads`` OS threads, whatever gevent patched; calls beyond them queue.

    The caller bounds how many it queues (``Runner.slots``): here nothing refuses, and nothing waits.
    """
    if gevent_active():
        return _FedNativeThreads(max_threads)
    return _PlainThreads(ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix=name))


class _PlainThreads:
    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor

    def submit(self, call: Callable[..., Any], /, *args: Any) -> None:
        self._executor.submit(call, *args)


class _FedNativeThreads:
    """gevent's pool of native threads, fed by a greenlet of its own.

    The pool's ``spawn`` waits, in the caller's greenlet, until one of its threads is free: a
    request that only meant to start a run (a lookup with ``Prefer: respond-async``) then waited
    for a run to end, 7 s, 26 s, and past 40 s behind long runs. Here the call is queued and
    ``submit`` returns; the feeder is the one that waits for a thread.
    """

    def __init__(self, max_threads: int) -> None:
        from gevent.queue import SimpleQueue
        from gevent.threadpool import ThreadPool

        self._pool = ThreadPool(max_threads)
        self._queued: SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = SimpleQueue()
        self._feeder: Any = None

    def submit(self, call: Callable[..., Any], /, *args: Any) -> None:
        self._queued.put((call, args))
        if self._feeder is None:  # started on first use: in the worker, after gunicorn forked it
            import gevent

            self._feeder = gevent.spawn(self._feed)

    def _feed(self) -> None:
        while True:
            call, args = self._queued.get()
            self._pool.spawn(call, *args)  # waits here, for a free thread, in order


def spawn(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    """Run ``target`` in the background: a greenlet under gevent, a daemon thread otherwise."""
    task = threading.Thread(target=target, args=args, name=name, daemon=True)
    task.start()
    return task


def native_sleep(seconds: float) -> None:
    """Sleep on a real thread without starting a gevent hub in it (the patched sleep would)."""
    if gevent_active():
        from gevent import monkey

        monkey.get_original("time", "sleep")(seconds)
    else:
        time.sleep(seconds)


def readable_now(sock: Any) -> bool:
    """Whether the kernel has bytes (or a hang-up) waiting on ``sock``: one poll() that never waits.

    The kernel's own poll(), not gevent's cooperative one (which the patched ``select`` module
    gives): a question that never waits needs no event loop, and gevent's costs about 35 µs.
    """
    poller = _kernel_poll()()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


@functools.cache
def _kernel_poll() -> Callable[[], Any]:
    """Looked up once: gevent patches a worker before it serves, never after."""
    if gevent_active():
        from gevent import monkey

        return monkey.get_original("select", "poll")
    return select.poll
