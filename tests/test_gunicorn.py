"""The service under a real gunicorn with the project's own gunicorn.conf.py."""

from __future__ import annotations

import http.client as http_client
import json
import os
import random
import signal
import string
import subprocess

import pytest

from harness.servers import GUNICORN
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import raw_exchange

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    with Gunicorn(log_path, env={"WEB_CONCURRENCY": "4"}) as running:
        yield running


def test_lookup_twice_then_events(server):
    first = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42")
    assert first.status == 200 and first.json()["source"] == "new"
    second = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=42")
    assert second.json() == {"runId": first.json()["runId"], "source": "cache"}
    events = http("GET", f"{server.url}/runs/{first.json()['runId']}/events")
    assert events.status == 200 and events.headers["Content-Type"] == "application/json"
    assert events.json()["count"] == len(events.json()["events"]) > 100


@pytest.mark.parametrize(
    ("path", "status", "body"),
    [
        ("/runs/lookup?scenarioId=test&seed=invalid", 400,
         {"type": "BAD_INPUT", "message": "seed must be a valid integer"}),
        ("/runs/non-existent-run/events", 404, {"type": "BAD_INPUT", "message": "Run non-existent-run not found"}),
        ("/nowhere", 404, {"type": "NOT_FOUND", "message": "No such endpoint"}),
    ],
    ids=["bad-seed", "unknown-run", "unknown-route"],
)
def test_errors_are_json(server, path, status, body):
    reply = http("GET", server.url + path)
    assert (reply.status, reply.json()) == (status, body)
    assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(("trusted", "warned"), [("0", True), ("1", False)])
def test_on_a_heroku_style_host_forgetting_the_router_is_a_warning(tmp_path, trusted, warned):
    env = {"DYNO": "web.1", "RUN_REGISTRY_TRUSTED_PROXIES": trusted}
    with Gunicorn(tmp_path / "gunicorn.log", env=env, bind=False) as running:  # PORT, as the host sets it
        log = running.log()
    assert ("set RUN_REGISTRY_TRUSTED_PROXIES=1" in log) is warned


def test_one_worker_whatever_web_concurrency_says(server):
    log = server.log()
    assert log.count("Booting worker") == 1
    assert "1 worker process (gevent, 2000 connections)" in log and "WEB_CONCURRENCY=4 ignored" in log
    assert "anyone who reaches it" not in log  # open, but on loopback only: no one else reaches it


def log_lines(server):
    return [json.loads(line) for line in server.log().splitlines()]


def test_one_json_log_line_per_request_with_its_request_id(server):
    reply = http("GET", f"{server.url}/runs/lookup?scenarioId=logged&seed=1", headers={"X-Request-ID": "req-42"})
    assert reply.headers["X-Request-ID"] == "req-42"
    lines = [line for line in log_lines(server) if line.get("path") == "/runs/lookup?scenarioId=logged&seed=1"]
    assert len(lines) == 1
    assert sum("scenarioId=logged" in text for text in server.log().splitlines()) == 1  # gunicorn logs none
    line = lines[0]
    assert line["logger"] == "app.request" and line["level"] == "INFO"
    assert (line["method"], line["status"], line["source"], line["request_id"]) == ("GET", 200, "new", "req-42")
    assert line["client"] == "127.0.0.1" and line["duration_ms"] > 0
    # The engine's own log line of that request carries the same id.
    engine_lines = [entry for entry in log_lines(server) if entry["message"].startswith("engine ran scenario logged")]
    assert [entry["request_id"] for entry in engine_lines] == ["req-42"]


def test_a_missing_or_unusable_request_id_is_replaced(server):
    generated = http("GET", f"{server.url}/healthz").headers["X-Request-ID"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    for unusable in ("a b", "x" * 129, "<script>", "../../etc/passwd", "a:b", "a/b", "a+b=", "id@host"):
        replaced = http("GET", f"{server.url}/healthz", headers={"X-Request-ID": unusable}).headers["X-Request-ID"]
        assert replaced != unusable and len(replaced) == 32


def test_every_log_line_is_json(server):
    http("GET", f"{server.url}/runs/lookup?scenarioId=test&seed=invalid")
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in log_lines(server))


def test_a_path_with_unicode_line_separators_is_one_log_line(server):
    """U+0085, U+2028 and U+2029 end a line for many log consumers (Python's splitlines among them)."""
    separators = "%C2%85%E2%80%A8%E2%80%A9"
    reply = http("GET", f"{server.url}/runs/a{separators}b/events?scenarioId={separators}&x=%0b%0c%1c")
    assert reply.status == 404
    text = server.log_path.read_bytes().decode("utf-8")
    assert text.splitlines() == text.split("\n")[:-1]  # no line boundary but the newlines
    [line] = [entry for entry in log_lines(server) if entry.get("path", "").startswith("/runs/a")]
    assert line["status"] == 404


def test_a_chunked_body_over_64_kib_is_413_not_cut_short(server):
    run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=chunked&seed=1").json()["runId"]
    valid = json.dumps({"left": {"scenarioId": "a", "seed": 1}, "right": {"scenarioId": "b", "seed": 2}}).encode()
    body = valid + b" " * (64 * 1024 - len(valid)) + b"x" * 16_000  # 81,536 bytes, the first 64 KiB valid
    for path in ("/compare", f"/runs/{run_id}/verify"):
        connection = http_client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request("POST", path, body=iter([body[:30_000], body[30_000:]]),
                               headers={"Content-Type": "application/json"}, encode_chunked=True)
            reply = connection.getresponse()
            assert (reply.status, json.loads(reply.read())["type"]) == (413, "PAYLOAD_TOO_LARGE"), path
        finally:
            connection.close()


def test_metric_labels_come_from_a_closed_set_whatever_the_method(server):
    before = http("GET", f"{server.url}/metrics").body
    randomness = random.Random(7)
    for _ in range(100):
        method = "".join(randomness.choices(string.ascii_uppercase, k=12))
        connection = http_client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request(method, "/runs/lookup?scenarioId=a&seed=1")
        assert connection.getresponse().status == 405
        connection.close()
    after = http("GET", f"{server.url}/metrics").body.decode()
    assert len(after) < len(before) + 4096  # one new series (method "other"), not a hundred
    assert 'method="other"' in after


def test_options_is_204_with_allow_and_no_html(server):
    connection = http_client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("OPTIONS", "/runs/lookup")
    reply = connection.getresponse()
    assert (reply.status, reply.getheader("Allow"), reply.read()) == (204, "GET, HEAD, OPTIONS", b"")
    assert reply.getheader("Content-Type") is None
    connection.close()


def test_no_form_of_the_redis_password_is_logged_at_start_up(tmp_path, redis_url):
    secret = "s3cr3t-Hunter2"
    url = redis_url.replace("redis://", f"redis://default:{secret}@") + f"?password={secret}"
    with Gunicorn(tmp_path / "secret.log", env={"RUN_REGISTRY_URL": url, "WEB_CONCURRENCY": "1"}) as running:
        http("GET", f"{running.url}/readyz")  # Redis refuses the password: the error is logged too
        log = running.log()
    assert "sharing the registry at redis://127.0.0.1:" in log
    assert secret not in log and "Hunter2" not in log


@pytest.mark.parametrize(
    "url", ["redis://:pa/ss-Hunter2@127.0.0.1:6379/0", "redis://127.0.0.1:6379/x?password=pa-Hunter2"],
    ids=["raw-slash", "query-password"],
)
def test_a_refused_redis_url_is_not_echoed(url):
    result = subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app", "--bind", "127.0.0.1:0"],
        cwd=ROOT, env={**os.environ, "RUN_REGISTRY_URL": url}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "RUN_REGISTRY_URL" in output and "Hunter2" not in output and "ss-" not in output


def test_port_variable_binds_all_interfaces(tmp_path):
    with Gunicorn(tmp_path / "port.log", bind=False) as running:
        assert http("GET", f"{running.url}/runs/lookup?scenarioId=a&seed=1").status == 200
        assert f"Listening at: http://0.0.0.0:{running.port}" in running.log()


@pytest.mark.parametrize(
    ("name", "value"),
    [("RUN_REGISTRY_TTL_MIN", "0"), ("RUN_REGISTRY_MAX_ENTRIES", "abc"), ("RUN_REGISTRY_ENGINE", "nope:Engine"),
     ("GUNICORN_WORKER_CONNECTIONS", "-1"), ("RUN_REGISTRY_MAX_WAITING", "5000"), ("RUN_REGISTRY_BIND", "3001"),
     ("RUN_REGISTRY_BIND", "[::1]"), ("PORT", "70000")],
)
def test_refused_setting_stops_start_up_with_one_line(name, value):
    env = {**os.environ, name: value}
    result = subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app", "--bind", "127.0.0.1:0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and lines[0].startswith("run-registry: refusing to start")


def test_sigterm_stops_gracefully(tmp_path):
    running = Gunicorn(tmp_path / "stop.log").start()
    assert running.stop(signal.SIGTERM) == 0
    assert "Shutting down: Master" in running.log()


@pytest.mark.parametrize(
    ("request_bytes", "status", "error_type"),
    [
        (b"GET /runs/lookup?scenarioId=" + b"a" * 5000 + b"&seed=1 HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI_TOO_LONG"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
        (b"GARBAGE\x01\x02 <script>\r\n\r\n", 400, "BAD_INPUT"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Evil: a\x00b<script>\r\n\r\n", 400, "BAD_INPUT"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400, "BAD_INPUT"),
    ],
    ids=["request-line-too-long", "header-too-large", "garbage-request-line", "nul-in-header", "bad-http-version"],
)
def test_requests_gunicorn_refuses_itself_are_answered_in_json(server, request_bytes, status, error_type):
    code, headers, body = raw_exchange(server.port, request_bytes)
    assert code == status and headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert set(answer) == {"type", "message"} and answer["type"] == error_type
    assert b"<script>" not in body and b"aaaa" not in body  # nothing of the input is echoed
