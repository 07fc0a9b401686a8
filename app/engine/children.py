"""Child processes the service owns: started in a process group of their own, read without
blocking anyone else, and stopped, group and all, so that none outlives what it was started for.

Written on the OS's calls rather than ``subprocess``, for two reasons measured here:

- under gunicorn's gevent worker ``subprocess`` is gevent's, whose ``Popen`` needs the main
  thread's child watchers: on an engine's native thread it fails ("child watchers are only
  available on the default loop"), and gevent's patching leaves the original ``Popen`` unusable
  (its ``_fork_exec`` is gone);
- once anything in the process starts one of those watchers, libev reaps every child with
  ``waitpid(-1)`` on SIGCHLD, and a ``waitpid`` of ours finds the exit status gone (3 of 20 spawns
  from a native thread got ECHILD). So nothing here, nor anything the service runs on a worker
  (engineCodeHash's git HEAD, ``capture``), starts one: ``posix_spawn`` and ``waitpid`` are the OS's;
- gevent's ``os.close`` defers the close to its loop's next turn, which never came while the
  worker started (or on an engine thread blocked in poll): a child waiting for its input's end
  waited for ever. ``close`` is the OS's too.

A child is started with ``posix_spawn`` (its own process group, signals back to their defaults,
an environment given whole), waited for through a pidfd polled beside its pipes with the
kernel's ``poll`` (so one thread reads standard output and error and hears the exit, and another
thread can wake it to stop), and stopped as a group: SIGTERM, SIGKILL 5 s later. A ``Warden``
process stops the groups of an owner that dies without stopping them (SIGKILL, the OOM killer).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

from app.serving.concurrency import kernel_poll
from app.serving.concurrency import native_lock
from app.serving.concurrency import os_close
from app.serving.concurrency import os_posix_spawn
from app.serving.concurrency import os_waitpid

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL this long after
STDOUT, STDERR = 1, 2
_READ_SIZE = 65536
# Signals a child starts with at their defaults: Python ignores SIGPIPE and SIGXFSZ, and a
# child inheriting an ignored SIGTERM or SIGINT could not be stopped by them.
_DEFAULT_SIGNALS = tuple(getattr(signal, name) for name in (
    "SIGPIPE", "SIGXFSZ", "SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD",
) if hasattr(signal, name))


class ChildTimeout(Exception):
    """The child did not end (or answer) by its deadline; it has been stopped."""


def resolve_executable(word: str, path: str | None) -> Path | None:
    """The file a command's first word runs: a path as given (relative to the working directory),
    or the name looked up on ``path``; ``None`` when there is no such executable."""
    found = word if "/" in word else shutil.which(word, path=path)
    if found is None or not os.access(found, os.X_OK) or not os.path.isfile(found):
        return None
    return Path(found).absolute()


class Child:
    """A started process in a process group of its own (its pid is the group's id), with pipes
    to its standard input, output and error. Read it on one thread; ``stop`` from any."""

    def __init__(self, executable: Path, argv: Sequence[str], env: Mapping[str, str],
                 warden: Warden | None = None) -> None:
        """:raises OSError: it could not be started (no such file, not executable, no memory)."""
        pipes = [os.pipe() for _ in range(3)]  # each end close-on-exec: only 0, 1, 2 are the child's
        (stdin_read, stdin_write), (stdout_read, stdout_write), (stderr_read, stderr_write) = pipes
        try:
            self.pid = os_posix_spawn(
                str(executable), list(argv), dict(env),
                file_actions=[(os.POSIX_SPAWN_DUP2, stdin_read, 0), (os.POSIX_SPAWN_DUP2, stdout_write, 1),
                              (os.POSIX_SPAWN_DUP2, stderr_write, 2)],
                setpgroup=0, setsigdef=_DEFAULT_SIGNALS, setsigmask=(),
            )
        except BaseException:
            for fd in (stdin_write, stdout_read, stderr_read):
                os_close(fd)
            raise
        finally:
            for fd in (stdin_read, stdout_write, stderr_write):
                os_close(fd)
        self._stdin: int | None = stdin_write
        self._streams = {stdout_read: STDOUT, stderr_read: STDERR}
        self._wake_read, self._wake_write = os.pipe()
        self._pidfd = _pidfd(self.pid)
        self._lock = native_lock()
        self._stop_at: float | None = None  # when the first SIGTERM was sent
        self._ended = False
        self.status: int | None = None  # the wait status, once reaped
        self._warden = warden
        if warden is not None:
            warden.watch(self.pid)

    def send(self, data: bytes) -> None:
        """Write ``data`` to its standard input and close it (a child that has gone: nothing to do)."""
        assert self._stdin is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._stdin, view):]
        except BrokenPipeError:
            pass  # it exited, or closed its input: its exit status will say what happened
        finally:
            os_close(self._stdin)
            self._stdin = None

    def output(self, deadline: float | None = None) -> Iterator[tuple[int, bytes]]:
        """``(STDOUT or STDERR, bytes)`` as the child writes them, until it has exited (what it
        wrote before is all read; ``status`` is then set) or it is stopped (then nothing more).

        :raises ChildTimeout: ``deadline`` (``time.monotonic()``) passed first; the group is stopped.
        """
        poller = kernel_poll()
        for fd in (*self._streams, self._wake_read):
            poller.register(fd, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        streams = dict(self._streams)
        while True:
            if self._stopped():
                return
            if deadline is None:
                timeout_ms = 50 if self._pidfd is None else None  # without a pidfd, look for the exit now and then
            else:
                timeout_ms = max(0, round((deadline - time.monotonic()) * 1000))
                if self._pidfd is None:
                    timeout_ms = min(timeout_ms, 50)
            ready = poller.poll(timeout_ms)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                self.stop()
                raise ChildTimeout()
            exited = False
            for fd, _ in ready:
                if fd in streams:
                    chunk = os.read(fd, _READ_SIZE)
                    if chunk:
                        yield streams[fd], chunk
                    else:
                        poller.unregister(fd)
                        del streams[fd]
                elif fd == self._pidfd:
                    exited = True
            if exited or (self._pidfd is None and self._reap(os.WNOHANG)):
                self._reap(0)
                yield from self._drain(poller, streams)
                return

    def _drain(self, poller: object, streams: dict[int, int]) -> Iterator[tuple[int, bytes]]:
        """What the exited child left in its pipes; output from processes it left behind is not its."""
        while streams:
            ready = [fd for fd, _ in poller.poll(0) if fd in streams]  # type: ignore[attr-defined]
            if not ready:
                return
            for fd in ready:
                chunk = os.read(fd, _READ_SIZE)
                if chunk:
                    yield streams[fd], chunk
                else:
                    poller.unregister(fd)  # type: ignore[attr-defined]
                    del streams[fd]

    def stop(self) -> None:
        """SIGTERM to its whole group, now (SIGKILL follows in ``end``); the reader stops reading.
        Safe from any thread, any number of times."""
        with self._lock:
            if self._ended:
                return
            if self._stop_at is None:
                self._stop_at = time.monotonic()
                _signal_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    def end(self) -> None:
        """Make sure nothing of it remains: stop the group if any of it runs (SIGKILL after the
        grace), reap the child, close the pipes. Blocks up to ``STOP_GRACE_S``; call it once, last."""
        if self.status is None and not self._reap(os.WNOHANG):
            self.stop()
            self._wait_exit(self._stop_at + STOP_GRACE_S if self._stop_at is not None else None)
            if self.status is None:
                _signal_group(self.pid, signal.SIGKILL)
                self._reap(0)
        if _group_alive(self.pid):  # what it started and left behind
            self.stop()
            grace_until = (self._stop_at or time.monotonic()) + STOP_GRACE_S
            while _group_alive(self.pid) and time.monotonic() < grace_until:
                time.sleep(0.01)
            if _group_alive(self.pid):
                _signal_group(self.pid, signal.SIGKILL)
        with self._lock:
            self._ended = True
        for fd in (*self._streams, self._wake_read, self._wake_write, self._pidfd, self._stdin):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os_close(fd)
        if self._warden is not None:
            self._warden.release(self.pid)

    def group_alive(self) -> bool:
        """Whether any process of its group still runs."""
        return _group_alive(self.pid)

    def kill_group(self) -> None:
        """SIGKILL to its whole group: what a stop's grace ends with."""
        _signal_group(self.pid, signal.SIGKILL)

    def _stopped(self) -> bool:
        with self._lock:
            return self._stop_at is not None

    def _wait_exit(self, until: float | None) -> None:
        while self.status is None:
            if until is not None and time.monotonic() >= until:
                return
            if self._pidfd is not None:
                poller = kernel_poll()
                poller.register(self._pidfd, select.POLLIN)
                poller.poll(None if until is None else max(0, round((until - time.monotonic()) * 1000)))
            else:
                time.sleep(0.01)
            self._reap(os.WNOHANG)

    def _reap(self, options: int) -> bool:
        """Collect its exit status (``options`` 0: waiting for it); whether it has one."""
        if self.status is not None:
            return True
        try:
            pid, status = os_waitpid(self.pid, options)
        except ChildProcessError:
            # Someone else reaped it (a SIGCHLD handler this module promises never to install):
            # the status is lost; say so rather than call it a success.
            self.status = -1
            return True
        if pid == 0:
            return False
        self.status = status
        return True

    def exit_description(self) -> str | None:
        """``None`` for a clean exit (0), else how it ended: "exited with status 3", "was killed by SIGKILL"."""
        status = self.status
        if status is None:
            return "did not exit"
        if status == -1:
            return "ended with an exit status the service could not read"
        if os.WIFSIGNALED(status):
            number = os.WTERMSIG(status)
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            return f"was killed by {name}"
        code = os.waitstatus_to_exitcode(status)
        return None if code == 0 else f"exited with status {code}"


def capture(argv: Sequence[str], timeout_s: float, environ: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """Run a command to its end: its exit code (-1: it could not run, or did not end in time)
    and its standard output (at most 1 MiB). For the service's own small questions (git HEAD)."""
    environ = os.environ if environ is None else environ
    executable = resolve_executable(argv[0], environ.get("PATH"))
    if executable is None:
        return -1, b""
    try:
        child = Child(executable, argv, environ)
    except OSError:
        return -1, b""
    output = bytearray()
    try:
        child.send(b"")
        for stream, chunk in child.output(deadline=time.monotonic() + timeout_s):
            if stream == STDOUT and len(output) < 1 << 20:
                output += chunk
    except ChildTimeout:
        return -1, bytes(output)
    finally:
        child.end()
    if child.status is None or child.status == -1 or not os.WIFEXITED(child.status):
        return -1, bytes(output)
    return os.waitstatus_to_exitcode(child.status), bytes(output)


class Warden:
    """A process that stops the engine process groups of its owner when the owner ends without
    stopping them: killed by SIGKILL, the OOM killer, a crash (app/engine/warden.py).

    Started on first use, once per owning process (a forked process, such as an RQ work-horse,
    starts its own): it reads its owner's "+<pgid>" and "-<pgid>" lines, and at the end of its
    input (every copy of the pipe closed: the owner is gone) stops each group still listed.
    """

    def __init__(self) -> None:
        self._lock = native_lock()
        self._owner = -1
        self._fd: int | None = None

    def watch(self, pgid: int) -> None:
        self._tell(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        self._tell(f"-{pgid}\n")

    def _tell(self, line: str) -> None:
        with self._lock:
            if self._owner != os.getpid():
                self._start()
            fd = self._fd
        if fd is None:
            return
        with contextlib.suppress(OSError):  # a warden gone: the groups are stopped by their owner alone
            os.write(fd, line.encode())  # under PIPE_BUF: atomic, whichever thread writes

    def _start(self) -> None:
        """Spawn this process's warden (called with the lock held)."""
        read_end, write_end = os.pipe()
        program = Path(__file__).with_name("warden.py")
        try:
            # -I -S: the standard library alone, no site-packages to import (it starts in ~10 ms).
            os_posix_spawn(sys.executable, [sys.executable, "-I", "-S", str(program), str(os.getpid())],
                           {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                           file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0)], setpgroup=0,
                           setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        except OSError:
            os_close(write_end)
            write_end = None  # type: ignore[assignment]
        finally:
            os_close(read_end)
        self._owner = os.getpid()
        self._fd = write_end


def _pidfd(pid: int) -> int | None:
    """A pidfd of the child (Linux 5.3 and later): readable once it has exited."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _signal_group(pgid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, number)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, which no signal ends, do not count)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return True
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def json_line(value: object) -> bytes:
    """One line of JSON, as engines are spoken to."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
