"""Real servers for tests: started on free loopback ports, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far, 0 if it has gone (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fleet_signing_key() -> str:
    """A signing key file for the tests' fleets (a Redis registry needs one configured), made once
    per process, readable by its owner alone."""
    global _fleet_key
    if _fleet_key is None:
        from app.signing import SigningKey

        directory = Path(tempfile.mkdtemp(prefix="run-registry-test-key-"))
        path = directory / "signing-key.pem"
        path.write_bytes(SigningKey.generate().pem())
        path.chmod(0o600)
        _fleet_key = str(path)
    return _fleet_key


def with_fleet_key(env: dict[str, str]) -> dict[str, str]:
    """``env``, with a signing key when its registry is a Redis and it names none (as an operator must)."""
    url = env.get("RUN_REGISTRY_URL") or env.get("REDIS_URL") or ""
    if url.startswith(("redis://", "rediss://")) and not env.get("RUN_REGISTRY_SIGNING_KEY"):
        return {**env, "RUN_REGISTRY_SIGNING_KEY": fleet_signing_key()}
    return env


_fleet_key: str | None = None
_given_ports: set[int] = set()
_given_ports_lock = threading.Lock()
_FIRST_PORT = 10_000


def _port_share() -> tuple[int, int]:
    """This process's ports (first, how many): below the kernel's ephemeral range, which neither
    another process's ``bind(0)`` nor a client's connection takes from, split between
    pytest-xdist's workers."""
    try:
        ephemeral_start = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_start = 32_768
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    span = max(ephemeral_start - _FIRST_PORT, 1_000) // workers
    return _FIRST_PORT + worker * span, span


def free_port() -> int:
    """A port nothing listens on now, and that this process has not handed out before: servers
    started at once (the benchmark's smoke run starts its parts together) never get the same one."""
    first, span = _port_share()
    with _given_ports_lock:
        # Each process starts somewhere else in its share (the benchmark's smoke run is a child
        # of a test process), then goes on one port at a time.
        start = (os.getpid() * 7919 + len(_given_ports)) % span
        for step in range(span):
            port = first + (start + step) % span
            if port in _given_ports:
                continue
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:  # in use, or lingering from a server stopped a moment ago
                    continue
            _given_ports.add(port)
            return port
    raise RuntimeError(f"no free port among {span} from {first}")


def live_children(pid: int) -> list[int]:
    """The live child processes of ``pid``: a killed child stays a zombie until its parent reaps
    it, and a zombie is no worker."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process went while we looked
        if int(fields[1]) == pid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def running_processes(marker: str) -> list[int]:
    """Live processes (zombies aside) whose command line holds ``marker``: a test's engine copied
    into its own directory is found by that directory, whatever else runs on the machine."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # the process went while we looked
        if marker in command and state not in ("Z", "X") and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies aside) of a process group."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def said_workers(log: str) -> int:
    """How many worker processes gunicorn.conf.py said, at start-up (in ``log``), it would run."""
    said = re.search(r"run-registry: (\d+) worker process", log)
    return int(said.group(1)) if said else 1


def stop_gunicorn(master: subprocess.Popen[bytes], master_signal: int, workers: list[int], timeout: float) -> int:
    """``master_signal`` to gunicorn's master and SIGKILL to ``workers``; returns once the master
    has exited and the workers have ended. A worker outliving its killed master still holds the
    listening socket a moment: stopped means that nothing answers on the port any more."""
    master.send_signal(master_signal)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        return master.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        master.kill()
        return master.wait()
    finally:
        deadline = time.monotonic() + timeout
        for pid in workers:
            while time.monotonic() < deadline and _running(pid):
                time.sleep(0.005)


def _running(pid: int) -> bool:
    """Whether that process still runs (a zombie's files are closed)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> Reply:
    """One HTTP request; error statuses are replies, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


class Gunicorn:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` as the Procfile runs it, on a free port."""

    def __init__(
        self, log_path: Path, env: dict[str, str] | None = None, bind: bool = True, app: str = "wsgi:app",
        extra_args: tuple[str, ...] = (), defaults: bool = False,
    ) -> None:
        """``defaults``: gunicorn's own settings (``gunicorn <app>``: one sync worker), not ours."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # No new-run limit unless a test sets one: tests start runs faster than any client should.
        self.env = with_fleet_key({**os.environ, "ENGINE_CODE_HASH": "gunicorn-test",
                                   "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0", **(env or {})})
        self.defaults = defaults
        # Without -c, gunicorn reads ./gunicorn.conf.py: with defaults it starts where there is none.
        self.cwd = log_path.parent if defaults else ROOT
        if defaults:
            self.env["PYTHONPATH"] = str(ROOT)
        self.args = [str(GUNICORN), *(() if defaults else ("-c", "gunicorn.conf.py")), *extra_args, app]
        if bind:
            self.args += ["--bind", f"127.0.0.1:{self.port}"]
        else:  # as a Heroku-style host starts it, where a developer's own RUN_REGISTRY_BIND would win
            if "RUN_REGISTRY_BIND" not in (env or {}):
                self.env.pop("RUN_REGISTRY_BIND", None)
            self.env["PORT"] = str(self.port)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Gunicorn:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log()}")
            try:
                http("GET", f"{self.url}/runs/ready-probe", timeout=1)
            except OSError:
                time.sleep(0.05)
                continue
            # One worker answering is not all of them: gunicorn forks its workers a random
            # 0-100 ms apart, so wait for as many as it said it would start to be ready (a worker
            # stopped while it still loads the app would hold the stop up for gunicorn's timeout).
            if self.defaults or self.ready_workers() >= self.expected_workers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.log()}")

    def ready_workers(self) -> int:
        """Workers that have said they serve (gunicorn.conf.py's post_worker_init), ever."""
        return self.log().count("run-registry: worker ready")

    def expected_workers(self) -> int:
        """How many worker processes gunicorn.conf.py said, at start-up, it would run."""
        return said_workers(self.log())

    def stop(self, sig: int = signal.SIGQUIT, timeout: float = 30) -> int | None:
        """Stop it, by default at once (SIGQUIT): a graceful SIGTERM makes each gevent worker wait
        up to a second for its next look at whether it should stop, a second on every one of
        the suite's servers. Tests of the graceful stop send SIGTERM.

        At once means at once: a gevent worker takes half a second to quit (its last greenlets,
        the interpreter's end), and the master, told to quit first, replaces none of them but
        sleeps 0.4 s in its loop before it exits. A master of one worker has nothing to tidy
        (only one of several removes its metrics directory) and is SIGKILLed with it.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        if sig != signal.SIGQUIT:
            return stop_gunicorn(self.process, sig, [], timeout)
        master_signal = signal.SIGKILL if self.expected_workers() == 1 else signal.SIGQUIT
        return stop_gunicorn(self.process, master_signal, self.worker_pids(), timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """The master's live children (its workers)."""
        assert self.process is not None
        return live_children(self.process.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the workers, summed (Linux /proc)."""
        total = 0
        for pid in self.worker_pids():
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                continue
        return total

    def cpu_seconds(self) -> float:
        """User and system CPU time of the master and its workers so far (Linux /proc)."""
        assert self.process is not None
        return sum(process_cpu_seconds(pid) for pid in (self.process.pid, *self.worker_pids()))

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def require_binary(name: str) -> str:
    """The binary's path; without it the test skips, or fails under CI=true (a skip is not a pass)."""
    import pytest

    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin")
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """A private redis-server on a free port (or a given one, to restart it in place)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> RedisServer:
        binary = require_binary("redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.directory / f"redis-{self.port}.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in (signal.SIGTERM, signal.SIGKILL):
                self.process.wait(timeout=15)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a test paused it
        self.stop()


class Nginx:
    """Real nginx with ``deploy/nginx.conf`` in front of ``upstream_port``, on a free port."""

    def __init__(self, directory: Path, upstream_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        site = (ROOT / "deploy" / "nginx.conf").read_text()
        # The file as shipped, moved to free ports: both lines must be there to move.
        assert "listen 80;" in site and "server 127.0.0.1:3001;" in site
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.port};")
        site = site.replace("server 127.0.0.1:3001;", f"server 127.0.0.1:{upstream_port};")
        (directory / "site.conf").write_text(site)
        temp_paths = "\n".join(
            f"    {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp paths
        self.config = directory / "nginx.conf"
        self.config.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log info;\nevents {{ worker_connections 256; }}\n"
            f"http {{\n    access_log {directory}/access.log;\n{temp_paths}\n"
            f"    include {directory}/site.conf;\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> Nginx:
        binary = require_binary("nginx")
        check = subprocess.run([binary, "-t", "-p", str(self.directory), "-c", str(self.config)],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([binary, "-p", str(self.directory), "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                errors = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"nginx exited: {errors}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("nginx did not listen in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def metric(text: str, name: str) -> float:
    """The one sample named ``name`` (labels included) in a Prometheus text exposition."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, name
    return values[0]


def procfile_command(kind: str) -> str:
    """The Procfile's command line for a process type (``web``, ``worker``)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == kind:
            return command.strip()
    raise KeyError(kind)


class ProcfileProcess:
    """One process of a Procfile type, started as a Heroku-style host starts it: the Procfile's
    command in a shell, the virtualenv's binaries first on PATH, ``PORT`` for ``web``."""

    def __init__(self, kind: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.log_path = log_path
        self.port = free_port() if kind == "web" else None
        self.url = f"http://127.0.0.1:{self.port}" if self.port else None
        self.env = with_fleet_key({**os.environ, "PATH": f"{GUNICORN.parent}:{os.environ.get('PATH', '')}",
                                   "ENGINE_CODE_HASH": "procfile-test", "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0",
                                   **(env or {})})
        if self.port:
            self.env["PORT"] = str(self.port)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> ProcfileProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(["bash", "-c", f"exec {procfile_command(self.kind)}"], cwd=ROOT,
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        ready = "Listening at:" if self.kind == "web" else "Listening on "
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log()}")
            if ready in self.log() and (self.url is None or self._answers()):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not start within {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        try:
            return http("GET", f"{self.url}/healthz", timeout=1).status == 200
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def children(self) -> list[int]:
        """Live child processes (gunicorn's workers, an RQ worker's work-horse)."""
        return live_children(self.pid)

    def stop(self, sig: int | None = None, timeout: float = 30) -> None:
        """Stop it: a web process at once (SIGQUIT, as ``Gunicorn.stop``), a worker warmly (SIGTERM,
        as a host stops it); or with ``sig``."""
        if self.process is None or self.process.poll() is not None:
            return
        if sig is None and self.kind == "web" and said_workers(self.log()) == 1:
            stop_gunicorn(self.process, signal.SIGKILL, self.children(), timeout)  # as Gunicorn.stop does
            return
        if sig is None:
            sig = signal.SIGQUIT if self.kind == "web" else signal.SIGTERM
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ProcfileProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(condition, timeout: float = 10.0, every: float = 0.005):  # type: ignore[no-untyped-def]
    """Poll a condition the test cannot be told of (another thread's or process's progress);
    its first true value."""
    pause = threading.Event()  # its wait keeps real time, whatever a test froze
    for _ in range(max(1, round(timeout / every))):
        value = condition()
        if value:
            return value
        pause.wait(every)
    raise AssertionError("condition never held")


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client library would send these) and read the answer until the
    server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), headers, body


async def http10_get(port: int, path: str, headers: dict[str, str], on_line=None, on_first=None) -> bytes:
    """One HTTP/1.0 GET; the body once the server closes. ``on_line(line, when)`` hears each line
    as it arrives (read line by line, which costs the client more), ``on_first()`` the first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write(f"GET {path} HTTP/1.0\r\nHost: bench\r\n{head}\r\n".encode())
    await writer.drain()
    chunks = []
    while True:
        chunk = await (reader.readline() if on_line is not None else reader.read(65536))
        if not chunk:
            break
        if not chunks and on_first is not None:
            on_first()
        chunks.append(chunk)
        if on_line is not None:
            on_line(chunk, time.time())
    writer.close()
    return b"".join(chunks).split(b"\r\n\r\n", 1)[1]
