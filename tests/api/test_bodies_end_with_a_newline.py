"""Every JSON body ends with a newline, so curl's output does not run into the prompt."""

from __future__ import annotations

import gzip


def test_every_json_body_ends_with_a_newline(client):
    looked_up = client.get("/runs/lookup?scenarioId=pricing-v1&seed=3")
    run_id = looked_up.get_json()["runId"]
    replies = {
        "lookup, new": looked_up,
        "lookup, cached": client.get("/runs/lookup?scenarioId=pricing-v1&seed=3"),
        "metadata": client.get(f"/runs/{run_id}"),
        "events": client.get(f"/runs/{run_id}/events"),
        "runs": client.get("/runs"),
        "compare": client.post("/compare", json={"left": {"scenarioId": "pricing-v1", "seed": 3},
                                                 "right": {"scenarioId": "pricing-v1", "seed": 3}}),
        "verify": client.post(f"/runs/{run_id}/verify"),
        "attestation": client.get(f"/runs/{run_id}/attestation"),
        "signing keys": client.get("/signing-keys"),
        "healthz": client.get("/healthz"),
        "stats": client.get("/registry/stats"),
        "unknown run": client.get("/runs/run_x_1_1"),
        "bad input": client.get("/runs/lookup?scenarioId=x"),
    }
    for name, reply in replies.items():
        assert reply.content_type.startswith("application/json"), name
        assert reply.data.endswith(b"}\n"), (name, reply.data[-20:])
    zipped = client.get(f"/runs/{run_id}/events", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.data) == replies["events"].data  # one representation, two encodings
