"""Real threads and light tasks, under gunicorn's gevent worker and without it.

Under the gevent worker, ``threading`` is monkey-patched: a ``threading.Thread`` is a greenlet,
cheap, and right for waiting (a writer that records a run, a follower tailing a Redis stream).
An engine computes, and a greenlet that computes stops every other connection of its process,
so engines run on real OS threads: gevent's own pool of native threads, whose results greenlets
wait for cooperatively. Without gevent (tests, ``flask run``) both are ordinary threads.

The two sides never share a patched ``threading`` lock, condition or event: a native thread
that releases one while a greenlet waits for it can leave the greenlet parked (gevent issue
#2013, still so in 26.9). A run's recorder waited on a patched Condition its engine thread
notified, and 1 run in 200 stalled until some other timer woke the process's hub (20 s, a
waiting lookup's limit; CI failed on it). So what they share is guarded by a lock of the OS
(``native_lock``), held for a few instructions and never across a switch, and a native thread
wakes a greenlet through a ``Bell``: on gevent's hub an async watcher, the one thing of libev
made to be signalled from another thread, as gevent's own thread pool does.
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
from typing import TypeVar

T = TypeVar("T")


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


def off_the_hub(call: Callable[[], T]) -> T:
    """``call()``, a computation that may take long, on a native thread of gevent's own pool while
    the calling greenlet waits cooperatively: the process's other connections are served
    meanwhile (the interpreter hands the hub its turn every few milliseconds), where on the
    greenlet itself none would be. Without gevent, called here. ``call`` must touch nothing that
    greenlets guard with gevent's locks (app/serving/concurrency.py's first paragraph)."""
    if gevent_active():
        import gevent

        return gevent.get_hub().threadpool.apply(call)
    return call()


def native_lock() -> threading.Lock:
    """A lock of the OS, whatever gevent patched: for state a native thread shares with greenlets.

    Hold it only for a few instructions: a greenlet blocked on it blocks its whole process.
    """
    if gevent_active():
        from gevent import monkey

        return monkey.get_original("threading", "Lock")()
    return threading.Lock()


class Bell(Protocol):
    """A wake-up any thread rings and the greenlet or thread that made the bell waits for."""

    def ring(self) -> None: ...

    def wait(self, timeout: float) -> None:
        """Until a ring since the last wait, or ``timeout`` seconds."""

    def close(self) -> None:
        """No more rings: called once, by the waiter, when it waits no more."""


def bell() -> Bell:
    """A ``Bell`` for the calling greenlet's hub, or, without gevent, for threads."""
    if gevent_active():
        return _HubBell()
    return _ThreadBell()


class _ThreadBell:
    def __init__(self) -> None:
        self._rung = threading.Event()

    def ring(self) -> None:
        self._rung.set()

    def wait(self, timeout: float) -> None:
        self._rung.wait(timeout)
        self._rung.clear()

    def close(self) -> None:
        pass


class _HubBell:
    """An async watcher, started for the bell's life: libev drops a send before a start."""

    def __init__(self) -> None:
        import gevent
        from gevent.event import Event

        self._rung = Event()  # set by the watcher's callback, on the hub's own thread
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._rung.set)

    def ring(self) -> None:
        self._watcher.send()  # libev's ev_async_send: safe from any thread

    def wait(self, timeout: float) -> None:
        self._rung.wait(timeout)
        self._rung.clear()

    def close(self) -> None:
        self._watcher.stop()
        self._watcher.close()


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
    poller = kernel_poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def kernel_poll() -> Any:
    """A ``select.poll`` object of the kernel's, whatever gevent patched: for a native thread,
    which may block in it (a greenlet must not), and for questions that never wait."""
    return _original("select", "poll")()


def os_posix_spawn(*args: Any, **kwargs: Any) -> int:
    """The OS's ``posix_spawn``: gevent's starts a child watcher for the new process, which only
    works on the main thread's loop ("child watchers are only available on the default loop")."""
    return int(_original("os", "posix_spawn")(*args, **kwargs))


def os_close(fd: int) -> None:
    """The OS's ``close``: gevent's (25.8 and later) defers the close to the next turn of the
    calling thread's event loop, which never comes on an engine thread blocked in the kernel's
    poll, nor while the worker starts: a child waiting for its input's end waited for ever."""
    _original("os", "close")(fd)


def os_waitpid(pid: int, options: int) -> tuple[int, int]:
    """The OS's ``waitpid``: on a native thread, blocking there (gevent's would want a watcher)."""
    pid_and_status: tuple[int, int] = _original("os", "waitpid")(pid, options)
    return pid_and_status


@functools.cache
def _original(module: str, name: str) -> Any:
    """Looked up once: gevent patches a worker before it serves, never after."""
    if gevent_active():
        from gevent import monkey

        return monkey.get_original(module, name)
    return getattr(__import__(module), name)
