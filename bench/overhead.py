"""What the service adds to a request beyond its floor, in-process: no gunicorn, no sockets.

The service's WSGI app and the floor's (bench/floor.py, answering the service's own bytes)
are called with the same WSGI environ, one after the other; each figure is the median of five
batches. The difference is what the service's own code costs a request (the request id, the
request line, the metrics, validation, the registry, the view), free of the noise that wrk and
a shared machine add to the full benchmark, so it shows what a change gained.

    python -m bench.overhead            # one table, in a minute or so
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

from app.access import parse_keys
from app.config import load_settings
from app.factory import create_app
from bench.run import KEPT_HEADERS

KEYED = ("lookup hit", "events JSON")  # measured again with keys on: what the check costs
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def call(app: WSGIApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    answer: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], _exc_info: object = None) -> None:
        answer.append((status, headers))

    body = app(environ, start_response)
    data = b"".join(body)
    if hasattr(body, "close"):
        body.close()
    return answer[0][0], answer[0][1], data


def environ_for(path: str, headers: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    environ = EnvironBuilder(path=path, headers=list(headers), base_url="http://127.0.0.1:3001").get_environ()
    environ["REMOTE_ADDR"] = "127.0.0.1"
    return environ


def per_request_us(app: WSGIApp, environ: dict[str, Any], calls: int) -> float:
    for _ in range(calls // 20):  # warm: caches, the encoded replays
        call(app, dict(environ))
    batches = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            call(app, dict(environ))
        batches.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls a batch (a tenth for the large bodies)")
    args = parser.parse_args()
    os.environ["RUN_REGISTRY_ACCESS_LOG"] = "1"
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved_stdout = os.dup(1)
    os.dup2(devnull, 1)  # the request lines are written, as in production, but not kept
    try:
        rows = measure(args.calls)
    finally:
        os.dup2(saved_stdout, 1)
    print("| request | service µs | floor µs | the service adds µs |")
    print("|---|---:|---:|---:|")
    for name, service, floor in rows:
        print(f"| {name} | {service:.1f} | {floor:.1f} | {service - floor:.1f} |")
    measured = {name: service for name, service, _ in rows}
    for name in KEYED:
        print(f"\nThe key check ({name}): {measured[f'{name}, keys on'] - measured[name]:+.1f} µs a request"
              " (keys on, with one of three keys, minus keys off)")


def measure(calls: int) -> list[tuple[str, float, float]]:
    settings = load_settings({**os.environ, "RUN_REGISTRY_TTL_MIN": "600", "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0"})
    service = create_app(settings)
    lookup = "/runs/lookup?scenarioId=pricing-v1&seed=42"
    run_id = json.loads(call(service, environ_for(lookup))[2])["runId"]
    etag = dict(call(service, environ_for(f"/runs/{run_id}/events"))[1])["ETag"]
    sse = (("Accept", "text/event-stream"),)
    answers = {  # what the floor repeats, as bench.run records it: name -> (path, headers)
        "lookup": (lookup, ()),
        "events": (f"/runs/{run_id}/events", ()),
        "metadata": (f"/runs/{run_id}", ()),
        "sse": (f"/runs/{run_id}/events", sse),
        "csv": (f"/runs/{run_id}/export.csv", ()),
        "snapshot": (f"/runs/{run_id}/snapshot", ()),
    }
    requests = {  # name: (path, headers, the floor's answer to compare with)
        "lookup hit": (*answers["lookup"], "lookup"),
        "events JSON": (*answers["events"], "events"),
        "events JSON, 304": (answers["events"][0], (("If-None-Match", etag),), "events"),
        "GET /runs/<runId>": (*answers["metadata"], "metadata"),
        "events SSE (done run)": (*answers["sse"], "sse"),
        "CSV export": (*answers["csv"], "csv"),
        "snapshot ZIP": (*answers["snapshot"], "snapshot"),
    }
    recorded = {}
    for name, (path, headers) in answers.items():
        _, answer_headers, body = call(service, environ_for(path, headers))
        recorded[name] = {"body": body.hex(), "headers": {key: value for key, value in answer_headers
                                                          if key in KEPT_HEADERS}}
    recorded["events_gzip"] = recorded["events"]
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "floor.json").write_text(json.dumps(recorded))
        os.environ["BENCH_FLOOR_RESPONSES"] = str(Path(scratch) / "floor.json")
        from bench.floor import app as floor

        rows = []
        for name, (path, headers, floor_name) in requests.items():
            n = calls // 10 if floor_name in ("sse", "csv", "snapshot") else calls
            rows.append((name, per_request_us(service, environ_for(path, headers), n),
                         per_request_us(floor, environ_for(*answers[floor_name]), n)))
        # The same requests to a service with keys (three, as a rotation has), sent with one of them.
        keyed = create_app(dataclasses.replace(settings, api_keys=parse_keys(",".join(
            f"bench-{index}:{hashlib.sha256(f'secret-{index}'.encode()).hexdigest()}:read+run" for index in range(3)))))
        key = (("Authorization", "Bearer secret-2"),)
        keyed_run_id = json.loads(call(keyed, environ_for(lookup, key))[2])["runId"]
        for name in KEYED:
            path, headers, floor_name = requests[name]
            path = path.replace(run_id, keyed_run_id)
            rows.append((f"{name}, keys on", per_request_us(keyed, environ_for(path, (*headers, *key)), calls),
                         per_request_us(floor, environ_for(*answers[floor_name]), calls)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
