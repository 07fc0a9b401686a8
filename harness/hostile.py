"""Hostile clients, as raw sockets: bodies that trickle, readers that stop reading, idle
connections, and heads built to cost a parser CPU. Tests and the soak both use them."""

from __future__ import annotations

import socket
import time

# Ten headers of 8,000 spaces between two tokens: the shape that made backtracking parsers quadratic.
COSTLY_HEAD = (b"".join([b"Prefer: a" + b" " * 8000 + b"x\r\n"] * 10)
               + b"".join([b"Accept: text/event-stream;q=0.5, a/b" + b" " * 8000 + b"x\r\n"] * 10))


def connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    """A connection to the service; ``receive_buffer`` makes the kernel hold little for a reader
    that does not read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def start_slow_body(port: int, length: int = 60_000) -> socket.socket:
    """A ``POST /compare`` whose head says ``length`` bytes of body, of which one is sent."""
    sock = connect(port)
    sock.sendall(b"POST /compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n{" % length)
    return sock


def trickle(sock: socket.socket, seconds: float, every: float = 0.2) -> tuple[bytes, bool]:
    """Send a byte of body every ``every`` seconds for up to ``seconds``, reading what comes back.

    :returns: what the server answered, and whether it closed the connection.
    """
    answer = b""
    deadline = time.monotonic() + seconds
    sock.settimeout(every)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b" ")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset: closed by the server
            return answer, True
        if not chunk:
            return answer, True
        answer += chunk
    return answer, False


def start_pipelined_reader(port: int, path: str, requests: int = 40) -> socket.socket:
    """``requests`` GETs of ``path`` sent at once on one connection, and nothing of the answers read."""
    sock = connect(port, receive_buffer=4096)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * requests)
    return sock


def readable(sock: socket.socket) -> bool:
    """Whether the server has sent something (or closed) on ``sock``, without reading it."""
    import select

    return bool(select.select([sock], [], [], 0)[0])


def answers_until_closed(sock: socket.socket, timeout: float = 10) -> int:
    """Read a connection to its end: how many answers' status lines arrived."""
    received = b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except OSError:
        pass
    return received.count(b"HTTP/1.1 ")


def probe(urls: list[str], seconds: float, every: float = 0.05, timeout: float = 2) -> dict[str, object]:
    """Ask each of ``urls`` every ``every`` seconds for ``seconds``: how long each answer took,
    and what went wrong. Run in a process of its own (``python -m harness.hostile``), so that an
    attacker's busy loop in the test's process does not slow the probe instead of the server."""
    from harness.servers import http

    seconds_taken: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for url in urls:
            started = time.monotonic()
            try:
                status = http("GET", url, timeout=timeout).status
                if status != 200:
                    failures.append(f"{url}: {status}")
            except OSError as err:
                failures.append(f"{url}: {err.__class__.__name__}")
            seconds_taken.append(time.monotonic() - started)
        time.sleep(every)
    return {"seconds": seconds_taken, "failures": failures}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(probe(sys.argv[2:], float(sys.argv[1]))))
