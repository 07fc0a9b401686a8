"""Every error is the contract's JSON body: routing errors, unexpected failures, no HTML."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/runs/", "/runs/lookup/", "/runs/a/events/extra"])
def test_unknown_route_answers_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json() == {"type": "NOT_FOUND", "message": "No such endpoint"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/runs/lookup"), ("DELETE", "/runs/lookup"), ("PUT", "/runs/x"), ("PATCH", "/runs/x/events")],
)
def test_wrong_method_answers_json_405_with_allow(client, method, path):
    response = client.open(path, method=method, data=b"{}")
    assert response.status_code == 405
    assert response.get_json() == {"type": "METHOD_NOT_ALLOWED", "message": "Method not allowed for this endpoint"}
    assert "GET" in response.headers["Allow"]


def test_unexpected_failure_is_json_500_without_detail(app, client, monkeypatch):
    def broken(run_id):
        raise KeyError("internal secret /srv/app/registry.py")

    monkeypatch.setattr(app.extensions["run_service"], "run", broken)
    response = client.get("/runs/x")
    assert response.status_code == 500
    assert response.get_json() == {"type": "INTERNAL", "message": "Internal error"}
    assert b"secret" not in response.get_data() and b"Traceback" not in response.get_data()


def test_head_of_a_json_endpoint_works(client):
    response = client.head("/runs/lookup?scenarioId=a&seed=1")
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/runs/lookup", "/compare", "/runs/x/verify", "/healthz"])
def test_options_answers_204_with_allow_and_no_body(client, path):
    response = client.options(path)
    assert response.status_code == 204 and response.get_data() == b""
    assert "Content-Type" not in response.headers
    assert "OPTIONS" in response.headers["Allow"].split(", ")


def test_options_of_an_unknown_route_is_the_json_404(client):
    response = client.options("/nowhere")
    assert response.status_code == 404 and response.get_json()["type"] == "NOT_FOUND"
