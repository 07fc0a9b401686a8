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
from concurrent.futures import Executor
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def gevent_active() -> bool:
    """Whether this process runs under gevent's monkey-patching (gunicorn's gevent worker)."""
    try:
        from gevent import monkey
    except ImportError:  # gevent is installed with the service; a bare checkout may lack it
        return False
    return bool(monkey.is_module_patched("threading"))


def real_thread_pool(max_workers: int, name: str) -> Executor:
    """An executor whose workers are OS threads, whatever gevent patched."""
    if gevent_active():
        from gevent.threadpool import ThreadPoolExecutor as NativeThreadPoolExecutor

        return NativeThreadPoolExecutor(max_workers=max_workers)
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)


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
