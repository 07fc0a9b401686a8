"""deploy/nginx.conf in a real nginx, in front of a real gunicorn.

nginx's limits are per client address. Tests that spend a limit connect from their own loopback
address (127.0.0.0/8 is all on ``lo``), so they neither share a budget with each other nor with
the tests that connect from 127.0.0.1; a public and a private address are added to ``lo`` for the
test of who may read the operations' figures.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from http.client import HTTPResponse

import pytest

from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import Nginx
from harness.servers import Reply
from harness.servers import http
from harness.servers import raw_exchange
from harness.servers import require_binary

pytestmark = pytest.mark.server

PUBLIC_NETWORK = "198.51.100."  # TEST-NET-2: for documentation, never a real client
PRIVATE_NETWORK = "10.255.255."


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nginx")
    with (
        Gunicorn(directory / "gunicorn.log", env={"RUN_REGISTRY_TRUSTED_PROXIES": "1"}) as gunicorn,
        Nginx(directory, gunicorn.port) as nginx,
    ):
        yield gunicorn, nginx


@pytest.fixture(scope="module")
def outside_addresses():
    """A public and a private address on ``lo`` for the module, so clients can connect from them.

    Each is one no other run holds (a concurrent test run adds its own): removing it afterwards
    cannot pull it from under someone else.
    """
    ip = require_binary("ip")
    added: list[str] = []

    def add_one_of(network: str) -> str:
        for host in range(7, 255):
            result = subprocess.run([ip, "addr", "add", f"{network}{host}/32", "dev", "lo"],
                                    capture_output=True, text=True, check=False)
            if result.returncode == 0:
                added.append(f"{network}{host}")
                return added[-1]
            if "exists" not in result.stderr and "already assigned" not in result.stderr:
                break
        message = f"cannot add an address in {network}0/24 to lo: {result.stderr.strip()} (root or CAP_NET_ADMIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    try:
        yield add_one_of(PUBLIC_NETWORK), add_one_of(PRIVATE_NETWORK)
    finally:
        for address in added:
            subprocess.run([ip, "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True, check=False)


def shipped_limit(pattern: str) -> int:
    """A limit as deploy/nginx.conf states it, so the tests check the numbers the file promises."""
    found = re.search(pattern, (ROOT / "deploy" / "nginx.conf").read_text())
    assert found, f"deploy/nginx.conf states no {pattern}"
    return int(found.group(1))


def shipped_rate_and_burst() -> tuple[int, int]:
    return (shipped_limit(r"limit_req_zone .* rate=(\d+)r/s;"),
            shipped_limit(r"limit_req zone=\S+ burst=(\d+) nodelay;"))


def new_run(nginx):
    return http("GET", f"{nginx.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]


def connect_from(nginx, source: str) -> HTTPConnection:
    """A connection to nginx from the local address ``source``: nginx's limits and rules go by it."""
    return HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=(source, 0))


def exchange(connection: HTTPConnection, path: str, headers: dict[str, str] | None = None) -> Reply:
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    return Reply(response.status, dict(response.headers), response.read())


def request_from(nginx, source: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    connection = connect_from(nginx, source)
    try:
        return exchange(connection, path, headers)
    finally:
        connection.close()


def assert_json_error(reply: Reply, status: int, error_type: str) -> dict:
    assert reply.status == status, (reply.status, reply.body[:200])
    assert reply.headers["Content-Type"] == "application/json", reply.body[:200]
    body = reply.json()
    assert body["type"] == error_type and set(body) == {"type", "message"}
    return body


def test_lookup_and_events_through_nginx(stack):
    _, nginx = stack
    first = http("GET", f"{nginx.url}/runs/lookup?scenarioId=proxied&seed=1")
    second = http("GET", f"{nginx.url}/runs/lookup?scenarioId=proxied&seed=1")
    assert first.status == second.status == 200
    assert second.json() == {"runId": first.json()["runId"], "source": "cache"}
    events = http("GET", f"{nginx.url}/runs/{first.json()['runId']}/events")
    assert events.status == 200 and events.json()["count"] == 147


def test_sse_replay_arrives_event_by_event(stack):
    _, nginx = stack
    run_id = new_run(nginx)
    connection = HTTPConnection("127.0.0.1", nginx.port, timeout=30)
    connection.request("GET", f"/runs/{run_id}/events?lastEventId=141&pace=200",
                       headers={"Accept": "text/event-stream"})
    started = time.monotonic()
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    arrivals = []
    while line := response.readline():
        if line.startswith(b"id: "):
            arrivals.append((int(line[4:]), time.monotonic() - started))
    connection.close()
    assert [position for position, _ in arrivals] == [142, 143, 144, 145, 146, 147]
    # Paced 200 ms apart: buffered by the proxy they would all arrive together at the end.
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.1, arrivals


def test_request_id_and_forwarded_client_address_reach_the_log(stack):
    gunicorn, nginx = stack
    # Connect from another loopback address than nginx's own, so the two can be told apart.
    connection = HTTPConnection("127.0.0.1", nginx.port, timeout=10, source_address=("127.0.0.7", 0))
    connection.request("GET", "/runs/lookup?scenarioId=traced&seed=1")
    response = connection.getresponse()
    response.read()
    generated = response.getheader("X-Request-ID")
    connection.request("GET", "/runs/lookup?scenarioId=traced&seed=2", headers={"X-Request-ID": "client-id-7"})
    response = connection.getresponse()
    response.read()
    kept = response.getheader("X-Request-ID")
    connection.close()
    assert len(generated) == 32 and int(generated, 16) >= 0  # nginx's $request_id
    assert kept == "client-id-7"
    lines = [json.loads(line) for line in gunicorn.log().splitlines()]
    traced = {line["path"]: line for line in lines if line.get("path", "").startswith("/runs/lookup?scenarioId=traced")}
    assert traced["/runs/lookup?scenarioId=traced&seed=1"]["request_id"] == generated
    assert traced["/runs/lookup?scenarioId=traced&seed=2"]["request_id"] == "client-id-7"
    assert {line["client"] for line in traced.values()} == {"127.0.0.7"}


def test_errors_through_nginx_are_json(stack):
    _, nginx = stack
    missing = http("GET", f"{nginx.url}/nowhere")
    assert (missing.status, missing.json()["type"]) == (404, "NOT_FOUND")
    too_large = http("POST", f"{nginx.url}/compare", body=b" " * (65 * 1024),
                     headers={"Content-Type": "application/json"})
    assert too_large.status == 413
    assert too_large.json() == {"type": "PAYLOAD_TOO_LARGE", "message": "The request body is larger than 64 KiB"}
    assert too_large.headers["Content-Type"] == "application/json"


def test_upstream_down_is_a_json_503(tmp_path):
    with Gunicorn(tmp_path / "gunicorn.log") as gunicorn:
        port = gunicorn.port
    with socket.socket() as closed:  # nothing listens on the port gunicorn left
        assert closed.connect_ex(("127.0.0.1", port)) != 0
    with Nginx(tmp_path, port) as nginx:
        reply = http("GET", f"{nginx.url}/runs/lookup?scenarioId=a&seed=1")
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert reply.json() == {"type": "UNAVAILABLE", "message": "The run registry is unavailable; try again shortly"}


def test_a_key_passes_through_nginx_and_a_refusal_comes_back_as_the_service_said(tmp_path):
    secret = "through-nginx-secret"
    keys = {"RUN_REGISTRY_API_KEYS": f"proxied:{hashlib.sha256(secret.encode()).hexdigest()}:read+run",
            "RUN_REGISTRY_TRUSTED_PROXIES": "1"}
    with Gunicorn(tmp_path / "gunicorn.log", env=keys) as gunicorn, Nginx(tmp_path, gunicorn.port) as nginx:
        lookup = f"{nginx.url}/runs/lookup?scenarioId=a&seed=1"
        keyed = http("GET", lookup, headers={"Authorization": f"Bearer {secret}"})
        refused = http("GET", lookup)
        log = gunicorn.log()
    assert keyed.status == 200 and keyed.json()["source"] == "new"
    assert refused.status == 401 and refused.json()["type"] == "UNAUTHORIZED"
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="run-registry"'
    assert '"keyId":"proxied"' in log


def test_server_header_names_nginx_without_its_version(stack):
    _, nginx = stack
    proxied = http("GET", f"{nginx.url}/healthz")
    own_error = http("GET", f"{nginx.url}/runs/lookup?padding={'a' * 9000}")
    assert proxied.status == 200 and own_error.status == 414
    # The version tells a scanner which published vulnerabilities to try.
    assert proxied.headers["Server"] == own_error.headers["Server"] == "nginx"


def test_a_9_kib_query_string_is_a_json_414(stack):
    _, nginx = stack
    reply = http("GET", f"{nginx.url}/runs/lookup?scenarioId=pricing-v1&seed=1&padding={'a' * 9 * 1024}")
    assert_json_error(reply, 414, "URI_TOO_LONG")


def test_a_20_kib_header_is_a_json_431(stack):
    _, nginx = stack
    # nginx's own code for it is 494, which no client knows; the file sends the standard 431.
    reply = http("GET", f"{nginx.url}/healthz", headers={"X-Padding": "a" * 20 * 1024})
    assert_json_error(reply, 431, "HEADERS_TOO_LARGE")
    many = http("GET", f"{nginx.url}/healthz", headers={f"X-Padding-{n}": "a" * 7000 for n in range(6)})
    assert_json_error(many, 431, "HEADERS_TOO_LARGE")


@pytest.mark.parametrize(("request_bytes", "status", "error_type"), [
    (b"NOT-HTTP\r\n\r\n", 400, "BAD_INPUT"),  # before nginx has a URI
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "BAD_INPUT"),
    (b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505, "BAD_INPUT"),
    (b"TRACE /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
    (b"POST /compare HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "BAD_INPUT"),
], ids=["garbage", "two-hosts", "http-2.0-line", "trace", "unknown-transfer-encoding"])
def test_malformed_requests_nginx_refuses_get_json(stack, request_bytes, status, error_type):
    _, nginx = stack
    assert_json_error(Reply(*raw_exchange(nginx.port, request_bytes)), status, error_type)


def test_the_internal_error_uris_are_not_reachable_from_outside(stack):
    _, nginx = stack
    for path in ("/.nginx-error/bad-input", "/.nginx-error/internal"):
        assert_json_error(http("GET", f"{nginx.url}{path}"), 404, "NOT_FOUND")
    # And an error sent through one keeps its own status, not the 404 the URI gives to outsiders.
    assert_json_error(Reply(*raw_exchange(nginx.port, b"NOT-HTTP\r\n\r\n")), 400, "BAD_INPUT")


def test_a_flood_from_one_address_gets_json_429s_after_the_burst(stack):
    _, nginx = stack
    flooder = "127.0.0.21"
    rate, burst = shipped_rate_and_burst()
    sent = 4 * (burst + 1)

    def requests_on_one_connection(count):
        connection = connect_from(nginx, flooder)
        try:
            return [exchange(connection, "/healthz") for _ in range(count)]
        finally:
            connection.close()

    started = time.monotonic()
    # Several connections at once, as a load tool would: the rate gunicorn serves, not one
    # connection's round trips, sets the pace, so the flood outruns the limit on any machine.
    with ThreadPoolExecutor(8) as pool:
        replies = [reply for batch in pool.map(requests_on_one_connection, [sent // 8] * 8) for reply in batch]
    elapsed = time.monotonic() - started
    passed = [reply for reply in replies if reply.status == 200]
    limited = [reply for reply in replies if reply.status != 200]
    # The leaky bucket lets a burst through at once, then `rate` a second: never fewer, never more.
    assert burst + 1 <= len(passed) <= burst + 1 + rate * elapsed + 1, (len(passed), elapsed)
    assert limited
    for reply in limited:
        body = assert_json_error(reply, 429, "RATE_LIMITED")
        assert body["message"] == "Too many requests from this address; slow down"
        assert reply.headers["Retry-After"] == "1"
    # Per address: everyone else is served as before.
    assert http("GET", f"{nginx.url}/healthz").status == 200


def test_too_many_requests_in_progress_from_one_address_get_a_json_429(stack):
    _, nginx = stack
    client = "127.0.0.22"
    in_progress = shipped_limit(r"limit_conn \S+ (\d+);")
    assert in_progress + 3 <= shipped_rate_and_burst()[1], "the requests here must stay within the burst"
    run_id = new_run(nginx)
    streams, responses, holders = [], [], []
    try:
        # Event streams last as long as their replay and count as requests in progress: a client
        # may keep several open and still make its other requests. (Two: the service itself runs
        # no more paced replays at once, RUN_REGISTRY_PACED_REPLAYS.)
        for _ in range(2):
            streams.append(stream := connect_from(nginx, client))
            stream.request("GET", f"/runs/{run_id}/events?lastEventId=141&pace=200",
                           headers={"Accept": "text/event-stream"})
            response = stream.getresponse()
            assert response.status == 200
            responses.append(response)
        # The rest of the allowance: requests whose body has not come yet. nginx's
        # "100 Continue" says it counted the request and waits for the body.
        for _ in range(in_progress - len(streams)):
            holders.append(holder := socket.create_connection(("127.0.0.1", nginx.port), timeout=10,
                                                              source_address=(client, 0)))
            holder.sendall(b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
                           b"Expect: 100-continue\r\n\r\n")
            assert holder.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        refused = request_from(nginx, client, "/healthz")
        body = assert_json_error(refused, 429, "RATE_LIMITED")
        assert body["message"] == "Too many requests in progress at once from this address; wait for some to finish"
        assert refused.headers["Retry-After"] == "1"
        # Another address is not held back by this one's requests.
        assert http("GET", f"{nginx.url}/healthz").status == 200
        # One finishes, and its place is free again. (Kept alive: nginx lets a request go before it
        # waits for the connection's next one. A closing connection would hold it for a while.)
        holders[0].sendall(b"{}")
        finished = HTTPResponse(holders[0])
        finished.begin()
        finished.read()
        assert finished.status == 405  # the service's answer to a POST to /healthz
        assert request_from(nginx, client, "/healthz").status == 200
        for response in responses:  # and the streams were served throughout, to their end
            assert re.findall(rb"^id: (\d+)$", response.read(), re.MULTILINE) == [b"%d" % n for n in range(142, 148)]
    finally:
        for holder in holders:
            holder.close()
        for stream in streams:
            stream.close()


def test_metrics_and_stats_are_served_to_loopback_and_private_networks_only(stack, outside_addresses):
    _, nginx = stack
    public, private = outside_addresses
    for path in ("/metrics", "/registry/stats"):
        assert request_from(nginx, "127.0.0.1", path).status == 200
        assert request_from(nginx, private, path).status == 200
        refused = request_from(nginx, public, path)
        assert assert_json_error(refused, 403, "FORBIDDEN") == {
            "type": "FORBIDDEN", "message": "Not served to this address"}
        # The address is the connection's: headers a client writes change nothing.
        spoofed = request_from(nginx, public, path, headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "10.0.0.1"})
        assert spoofed.status == 403
    # Spellings nginx resolves to the same path are refused too.
    for path in ("/metrics?format=text", "//metrics", "/%6Detrics", "/registry//stats", "/registry/%73tats"):
        assert request_from(nginx, public, path).status == 403, path
    # Everything else stays public.
    assert request_from(nginx, public, "/healthz").status == 200
