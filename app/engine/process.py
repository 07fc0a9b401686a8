"""Process engines (``command:<command line>``): any executable speaking ``run-registry-engine/1``.

For each run the service starts the command in a process group of its own, writes one JSON line
to its standard input (``{"protocol", "op": "run", "scenarioId", "seed"}``) and closes it; the
engine writes its events to standard output as JSON Lines, each as it is made, and exits 0 after
the last. ``{"op": "describe"}`` is answered with one line ``{"name", "version"}``: once at start-up.

The engine's identity (engineCodeHash) is its content: the name and version it describes, the
bytes of the executable it runs, and every file under its root (``RUN_REGISTRY_ENGINE_ROOT``, or
the directory of the first word of the command that names an existing file).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

from app.engine.base import Engine
from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.base import Identity
from app.engine.base import StderrSink
from app.engine.children import STDERR
from app.engine.children import STOP_GRACE_S
from app.engine.children import Child
from app.engine.children import ChildTimeout
from app.engine.children import Warden
from app.engine.children import json_line
from app.engine.children import resolve_executable
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.engine.events import JsonLines
from app.engine.events import MalformedEvent
from app.engine.events import event_from_line
from app.engine.identity import file_digest
from app.engine.identity import tree_digest
from app.engine.python import EngineLoadError
from app.models import EncodedEvent
from app.serving.concurrency import native_lock
from app.text import printable

PROTOCOL = "run-registry-engine/1"
DESCRIBE_TIMEOUT_S = 10.0
MAX_DESCRIPTION_BYTES = 64 * 1024
# An engine's standard error in the service's log: this many lines a run, each cut to LOGGED_LINE.
LOGGED_STDERR_LINES = 100
LOGGED_LINE = 500
LAST_WORDS = 200  # the last stderr line, in a failure's message
_PARTIAL_LINE = 4096  # the most of one stderr line kept while it is being written


class ProcessEngine(Engine):
    """An executable run once per run, in a process group of its own, with nothing of the service's
    environment but ``PATH``, ``HOME``, ``LANG`` and the variables named for it."""

    kind = "process"

    def __init__(self, spec: str, environment: Mapping[str, str], root: str | None = None) -> None:
        """Describe the engine (it must answer within 10 s) and digest what it runs.

        :raises EngineLoadError: the command is empty, cannot be found or run, or does not describe itself.
        """
        super().__init__(spec)
        command_line = spec.removeprefix("command:")
        try:
            self.argv = shlex.split(command_line)
        except ValueError as err:
            raise EngineLoadError(f"{spec!r} is not a command line: {err}") from None
        if not self.argv:
            raise EngineLoadError("command: names no command")
        self.environment = dict(environment)
        executable = resolve_executable(self.argv[0], self.environment.get("PATH"))
        if executable is None:
            raise EngineLoadError(f"{self.argv[0]!r} is not an executable file"
                                  f"{'' if '/' in self.argv[0] else ' on PATH'}")
        self.executable = executable
        self.root = Path(root).absolute() if root else _default_root(self.argv, self.environment.get("PATH"))
        self._warden = Warden()
        self._lock = native_lock()
        self._live: set[Child] = set()
        name, version = self._describe()
        executable_digest = file_digest(executable.resolve())
        root_digest = tree_digest(self.root) if self.root is not None else ""
        self._identity = Identity(name, version, f"process:{executable_digest}:{root_digest}")

    def identity(self) -> Identity:
        return self._identity

    def run(self, scenario_id: str, seed: int, on_stderr: StderrSink | None = None) -> EngineRun:
        request = {"protocol": PROTOCOL, "op": "run", "scenarioId": scenario_id, "seed": seed}
        return _ProcessRun(self, self._start(), json_line(request), on_stderr)

    def close(self) -> None:
        """Stop every engine process group still running (SIGTERM, SIGKILL after the grace)."""
        with self._lock:
            live = list(self._live)
        for child in live:
            child.stop()
        # The engine threads reap their children; here only the groups' end is waited for.
        until = time.monotonic() + STOP_GRACE_S
        while any(child.group_alive() for child in live) and time.monotonic() < until:
            time.sleep(0.01)
        for child in live:
            child.kill_group()
            self._warden.release(child.pid)  # stopped here: the process may end before its thread says so

    def _start(self) -> Child:
        try:
            child = Child(self.executable, self.argv, self.environment, self._warden)
        except OSError as err:
            raise EngineError(f"it could not be started: {printable(err.strerror or str(err))}") from None
        with self._lock:
            self._live.add(child)
        return child

    def _forget(self, child: Child) -> None:
        with self._lock:
            self._live.discard(child)

    def _describe(self) -> tuple[str, str]:
        try:
            child = Child(self.executable, self.argv, self.environment)
        except OSError as err:
            raise EngineLoadError(f"{self.argv[0]!r} could not be started: {err.strerror or err}") from None
        out, stderr = bytearray(), _StderrLines(None)
        try:
            child.send(json_line({"protocol": PROTOCOL, "op": "describe"}))
            for stream, chunk in child.output(deadline=time.monotonic() + DESCRIBE_TIMEOUT_S):
                if stream == STDERR:
                    stderr.feed(chunk)
                elif len(out) < MAX_DESCRIPTION_BYTES:
                    out += chunk
        except ChildTimeout:
            raise EngineLoadError(f"it did not describe itself within {DESCRIBE_TIMEOUT_S:g} s"
                                  f"{stderr.suffix()}") from None
        finally:
            child.end()
        problem = child.exit_description()
        if problem is not None:
            raise EngineLoadError(f"describe: it {problem}{stderr.suffix()}")
        line = bytes(out).split(b"\n", 1)[0]
        try:
            described = json.loads(line)
        except (ValueError, RecursionError):
            raise EngineLoadError(f'describe: its answer is not one line of JSON {{"name", "version"}}: '
                                  f"{printable(line.decode(errors='replace'), 100)!r}{stderr.suffix()}") from None
        if not isinstance(described, dict) or not all(
            isinstance(described.get(field), str) and 0 < len(described[field]) <= 128 for field in ("name", "version")
        ):
            raise EngineLoadError('describe: its answer lacks "name" and "version" (strings of 1 to 128 characters)')
        return printable(described["name"], 128), printable(described["version"], 128)


class _ProcessRun(EngineRun):
    """One process's run: its standard output, line by line, into events; the rest into its reason."""

    def __init__(self, engine: ProcessEngine, child: Child, request: bytes, on_stderr: StderrSink | None) -> None:
        self._engine = engine
        self._child = child
        self._request = request
        self._stderr = _StderrLines(on_stderr)

    def __iter__(self) -> Iterator[EncodedEvent]:
        child = self._child
        child.send(self._request)
        lines, number, written = JsonLines(), 0, 0
        for stream, chunk in child.output():
            if stream == STDERR:
                self._stderr.feed(chunk)
                continue
            written += len(chunk)
            if written > MAX_TRANSCRIPT_BYTES:
                child.stop()
                raise EngineError(f"it wrote more than {MAX_TRANSCRIPT_BYTES} bytes to standard output"
                                  f"{self._stderr.suffix()}")
            for line in lines.feed(chunk):
                number += 1
                yield self._event(line, number)
        self._stderr.close()
        if child.status is None:
            raise EngineError("it was stopped")  # given up: nobody records this run any more
        problem = child.exit_description()
        if problem is not None:
            raise EngineError(f"it {problem}{self._stderr.suffix()}")
        last = lines.rest()
        if last is not None:  # a last line written without its newline
            number += 1
            yield self._event(last, number)
        if number == 0:
            raise EngineError(f"it wrote no events{self._stderr.suffix()}")

    def _event(self, line: bytes, number: int) -> EncodedEvent:
        try:
            return event_from_line(line)
        except MalformedEvent as malformed:
            self._child.stop()
            raise EngineError(f"line {number} of its output is not an event: {malformed}"
                              f"{self._stderr.suffix()}") from None

    def cancel(self) -> None:
        self._child.stop()

    def end(self) -> None:
        try:
            self._child.end()
        finally:
            self._engine._forget(self._child)

    def last_words(self) -> str | None:
        return self._stderr.last


class _StderrLines:
    """An engine's standard error, line by line: the first ``LOGGED_STDERR_LINES`` to ``sink``
    (the log, tagged with the runId by the runner), and the last one kept for a failure's message."""

    def __init__(self, sink: StderrSink | None) -> None:
        self._sink = sink
        self._partial = bytearray()
        self._logged = 0
        self._unlogged = 0
        self.last: str | None = None

    def feed(self, chunk: bytes) -> None:
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            self._partial += piece[:max(0, _PARTIAL_LINE - len(self._partial))]
            self._line(bytes(self._partial))
            self._partial.clear()
        self._partial += rest[:max(0, _PARTIAL_LINE - len(self._partial))]

    def close(self) -> None:
        """The stream's end: its last line without a newline, and how many lines went unlogged."""
        if self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()
        if self._unlogged and self._sink is not None:
            self._sink(f"... and {self._unlogged} more lines on standard error, not logged")
            self._unlogged = 0

    def suffix(self) -> str:
        """``; its last line on standard error: ...`` for a failure's message, when there is one."""
        if self._partial:
            self.close()
        return f"; its last line on standard error: {self.last}" if self.last else ""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if not text.strip():
            return
        self.last = printable(text, LAST_WORDS)
        if self._sink is None:
            return
        if self._logged < LOGGED_STDERR_LINES:
            self._logged += 1
            self._sink(printable(text, LOGGED_LINE))
        else:
            self._unlogged += 1


def _default_root(argv: Sequence[str], search_path: str | None) -> Path | None:
    """The directory of the first argument that names an existing file (``node engine.js``: the
    script's), else of the command itself when it is given as a path outside PATH (``./engine``);
    an interpreter's directory (``/usr/bin``) is not the engine's."""
    for word in argv[1:]:
        if Path(word).is_file():
            return Path(word).absolute().parent
    command = Path(argv[0])
    on_path = {Path(entry).absolute() for entry in (search_path or "").split(":") if entry}
    if "/" in argv[0] and command.is_file() and command.absolute().parent not in on_path:
        return command.absolute().parent
    return None
