"""Hostile clients against the Procfile's web command (gunicorn, gevent, no proxy in front):
headers that cost CPU, bodies and readers that never finish, idle connections by the thousand."""

from __future__ import annotations

import pytest

from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import raw_exchange

pytestmark = pytest.mark.server


def test_headers_built_to_backtrack_neither_stall_nor_kill_the_worker(tmp_path):
    # Ten Prefer and ten Accept headers of 8,000 spaces: 8 s of CPU for the old parsers, past this
    # gunicorn's timeout, which killed the worker and, in memory, every run with it.
    with Gunicorn(tmp_path / "gunicorn.log", extra_args=("--timeout", "3")) as server:
        lookup = f"{server.url}/runs/lookup?scenarioId=kept&seed=1"
        run_id = http("GET", lookup).json()["runId"]
        spaces = b" " * 8000
        head = b"".join([b"Prefer: a" + spaces + b"x\r\n"] * 10
                        + [b"Accept: text/event-stream;q=0.5, a/b" + spaces + b"x\r\n"] * 10)
        for path in (b"/runs/lookup?scenarioId=kept&seed=1", f"/runs/{run_id}/events".encode()):
            status, _, _ = raw_exchange(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + head
                                        + b"Connection: close\r\n\r\n")
            assert status == 200
        assert http("GET", lookup).json() == {"runId": run_id, "source": "cache"}
        assert "WORKER TIMEOUT" not in server.log()


def test_a_head_of_more_than_32_lines_is_a_json_431(tmp_path):
    with Gunicorn(tmp_path / "gunicorn.log") as server:
        head = b"".join(b"X-Line-%d: x\r\n" % index for index in range(33))
        status, headers, body = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert (status, headers["Content-Type"]) == (431, "application/json") and b"HEADERS_TOO_LARGE" in body
