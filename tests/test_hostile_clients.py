"""Hostile clients against the Procfile's web command (gunicorn, gevent, no proxy in front):
headers that cost CPU, bodies and readers that never finish, idle connections by the thousand."""

from __future__ import annotations

import json
import time

import pytest

from harness import hostile
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import raw_exchange
from harness.servers import wait_until

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One web process for the tests that need nothing else: a client timeout of a second, a
    gunicorn timeout of three, and an engine whose scenarioIds say how long their runs are."""
    env = {"RUN_REGISTRY_CLIENT_TIMEOUT_S": "1", "RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine"}
    with Gunicorn(tmp_path_factory.mktemp("hostile") / "gunicorn.log", env=env,
                  extra_args=("--timeout", "3")) as running:
        yield running


def test_headers_built_to_backtrack_neither_stall_nor_kill_the_worker(server):
    # Ten Prefer and ten Accept headers of 8,000 spaces: 8 s of CPU for the old parsers, past this
    # gunicorn's timeout, which killed the worker and, in memory, every run with it.
    lookup = f"{server.url}/runs/lookup?scenarioId=kept&seed=1"
    run_id = http("GET", lookup).json()["runId"]
    for path in (b"/runs/lookup?scenarioId=kept&seed=1", f"/runs/{run_id}/events".encode()):
        status, _, _ = raw_exchange(server.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                                    + hostile.COSTLY_HEAD + b"Connection: close\r\n\r\n")
        assert status == 200
    assert http("GET", lookup).json() == {"runId": run_id, "source": "cache"}
    assert "WORKER TIMEOUT" not in server.log()


def test_a_head_of_more_than_32_lines_is_a_json_431(server):
    head = b"".join(b"X-Line-%d: x\r\n" % index for index in range(33))
    status, headers, body = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    assert (status, headers["Content-Type"]) == (431, "application/json") and b"HEADERS_TOO_LARGE" in body


def test_a_body_that_does_not_arrive_within_the_client_timeout_is_408_and_its_connection_closed(server):
    sock = hostile.start_slow_body(server.port)
    answer, closed = hostile.trickle(sock, seconds=8)  # a byte every 0.2 s: no single read waits 1 s
    sock.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.upper() == b"HTTP/1.1 408 REQUEST TIMEOUT" and closed
    assert b"Connection: close" in rest
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
        "type": "REQUEST_TIMEOUT", "message": "The request's body did not arrive within 1 s of its head"}


def test_slow_bodies_and_idle_connections_filling_the_worker_leave_room_for_everyone_else(tmp_path):
    env = {"GUNICORN_WORKER_CONNECTIONS": "100", "RUN_REGISTRY_MAX_WAITING": "50"}
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        lookup = f"{server.url}/runs/lookup?scenarioId=hot&seed=1"
        run_id = http("GET", lookup).json()["runId"]
        # 150 connections that give no whole request, for a worker that holds 100.
        hogs = [hostile.start_slow_body(server.port) for _ in range(75)]
        hogs += [hostile.connect(server.port) for _ in range(75)]
        try:
            for _ in range(20):  # each answered at once: the longest waiting hogs make room
                assert http("GET", f"{server.url}/healthz", timeout=2).status == 200
                assert http("GET", lookup, timeout=2).json() == {"runId": run_id, "source": "cache"}
        finally:
            for hog in hogs:
                hog.close()


def test_a_client_that_stops_reading_its_answers_is_dropped(server):
    run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=paced-0-20000&seed=1").json()["runId"]
    # Forty answers of 1.3 MB each, none read: far more than any socket buffers.
    reader = hostile.start_pipelined_reader(server.port, f"/runs/{run_id}/events")
    wait_until(lambda: "left an answer unread for 1 s" in server.log(), timeout=15)
    assert hostile.answers_until_closed(reader) < 40
    reader.close()
    # A slow reader that keeps reading is served whole: no progress for the timeout is what counts.
    slow = hostile.connect(server.port, receive_buffer=4096)
    slow.sendall(f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    received = b""
    while chunk := slow.recv(16384):
        received += chunk
        time.sleep(0.0005)
    slow.close()
    assert json.loads(received.partition(b"\r\n\r\n")[2])["count"] == 20_003


def test_past_busy_engine_threads_a_run_queues_without_waiting_and_past_the_queue_is_503_at_once(tmp_path):
    env = {"RUN_REGISTRY_ENGINE": "harness.fakes:FileCountingEngine", "RUN_REGISTRY_ENGINE_THREADS": "2",
           "RUN_REGISTRY_ENGINE_QUEUE": "3", "RUN_REGISTRY_TEST_EXECUTIONS": str(tmp_path / "executions"),
           "RUN_REGISTRY_TEST_ENGINE_DELAY_S": "1"}
    with Gunicorn(tmp_path / "gunicorn.log", env=env) as server:
        def start(seed: int):
            return http("GET", f"{server.url}/runs/lookup?scenarioId=busy&seed={seed}",
                        headers={"Prefer": "respond-async"}, timeout=0.5)

        # Two runs take the threads, three wait for one: each lookup answered 202 at once, none of
        # them waiting in the request for a thread to free (that took the whole of a run before).
        started = [start(seed) for seed in range(5)]
        assert [reply.status for reply in started] == [202] * 5
        refused = start(5)
        assert (refused.status, refused.json()["type"], refused.headers["Retry-After"]) == (503, "UNAVAILABLE", "1")
        for reply in started:  # and the queued ones run, in their turn
            run = f"{server.url}/runs/{reply.json()['runId']}"
            wait_until(lambda run=run: http("GET", run).json()["status"] == "done", timeout=20, every=0.1)


def test_a_client_that_expects_100_continue_is_told_to_send_its_body(server):
    body = json.dumps({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "a", "seed": 2},
                       "padding": "x" * 2000}).encode()  # curl asks first for bodies over 1 KiB
    sock = hostile.connect(server.port)
    sock.sendall(b"POST /compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue"
                 b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body, or curl waits a second
    sock.sendall(body)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"100 Continue") == 0


def test_the_answer_to_a_body_too_large_is_not_lost_while_the_client_still_sends_it(server):
    """A body past 64 KiB is refused unread (413) and its connection closed; closing a socket with
    unread bytes resets the connection, and the client, still sending, lost the answer (10 of 10)."""
    for _ in range(3):
        with hostile.connect(server.port) as sock:
            sock.sendall(b"POST /compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (70_000, b"x" * 70_000))
            wait_until(lambda sock=sock: hostile.readable(sock), timeout=10)  # answered while it still sends
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (20_000, b"y" * 20_000))
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 413") and b"PAYLOAD_TOO_LARGE" in answer


def test_a_path_that_starts_with_two_slashes_names_nothing(server):
    # Routing would take //runs/<id>/replay as /runs/<id>/replay, and the page's links, made from
    # its path, would then lead to another host (//runs/... is protocol-relative).
    run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=kept&seed=2").json()["runId"]
    for path in (f"//runs/{run_id}/replay", f"//runs/{run_id}/events", "//healthz"):
        status, headers, body = raw_exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                             "Connection: close\r\n\r\n".encode())
        assert (status, headers["Content-Type"]) == (404, "application/json"), path
        assert json.loads(body) == {"type": "NOT_FOUND", "message": "No such endpoint"}
    assert http("GET", f"{server.url}/runs/{run_id}/replay").status == 200
