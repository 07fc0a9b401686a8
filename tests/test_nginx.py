"""deploy/nginx.conf in a real nginx, in front of a real gunicorn."""

from __future__ import annotations

import itertools
import json
import socket
import time
from http.client import HTTPConnection

import pytest

from tests.servers import Gunicorn
from tests.servers import Nginx
from tests.servers import http

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    directory = tmp_path_factory.mktemp("nginx")
    with (
        Gunicorn(directory / "gunicorn.log", env={"RUN_REGISTRY_TRUSTED_PROXIES": "1"}) as gunicorn,
        Nginx(directory, gunicorn.port) as nginx,
    ):
        yield gunicorn, nginx


def new_run(nginx):
    return http("GET", f"{nginx.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]


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
