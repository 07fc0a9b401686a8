"""Keys and scopes (docs/operations.md, "Keys and scopes") against a real gunicorn: who may do what
on every route, rotation, anonymous reads, a limit per key, and nothing of a secret anywhere."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess

import pytest

from harness.servers import GUNICORN
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server

SECRETS = {"reader": "s3cret-reader-0123456789", "runner": "s3cret-runner-0123456789",
           "operator": "s3cret-operator-012345678", "ci-old": "s3cret-ci-old-0123456789",
           "ci-new": "s3cret-ci-new-0123456789"}
SCOPES = {"reader": "read", "runner": "read+run", "operator": "ops", "ci-old": "read+run", "ci-new": "read+run"}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def entries(*key_ids: str) -> str:
    return ",".join(f"{key_id}:{digest(SECRETS[key_id])}:{SCOPES[key_id]}" for key_id in key_ids)


def bearer(key_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[key_id]}"}


CALLERS = {"no key": {}, "unknown secret": {"Authorization": "Bearer not-a-key"},
           "another scheme": {"Authorization": f"Basic {SECRETS['runner']}"},
           **{key_id: bearer(key_id) for key_id in ("reader", "runner", "operator")}}
CALLER_SCOPES = {"reader": {"read"}, "runner": {"read", "run"}, "operator": {"ops"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"RUN_REGISTRY_API_KEYS": entries("reader", "runner", "operator", "ci-old", "ci-new")}
    # PORT set, as a host sets it: on 0.0.0.0, where keys matter (and no warning is due).
    with Gunicorn(tmp_path_factory.mktemp("keys") / "gunicorn.log", env=env, bind=False) as running:
        yield running


@pytest.fixture(scope="module")
def done_run(server):
    return http("GET", f"{server.url}/runs/lookup?scenarioId=kept&seed=1", headers=bearer("runner")).json()["runId"]


_fresh = itertools.count(1000)


def routes(done_run: str) -> list[tuple[str, str, str, bytes | None, dict[str, str], set[str]]]:
    """(name, method, path, body, headers, scopes it needs); a fresh key for each that would start a run."""
    compare = {"left": {"scenarioId": "kept", "seed": 1}, "right": {"scenarioId": "kept", "seed": 1}}
    fresh_compare = {**compare, "right": {"scenarioId": "fresh", "seed": next(_fresh)}}
    json_type = {"Content-Type": "application/json"}
    return [
        ("healthz", "GET", "/healthz", None, {}, set()),
        ("readyz", "GET", "/readyz", None, {}, set()),
        ("replay page", "GET", f"/runs/{done_run}/replay", None, {}, set()),
        ("home page", "GET", "/", None, {}, set()),
        ("lookup hit", "GET", "/runs/lookup?scenarioId=kept&seed=1", None, {}, {"read"}),
        ("lookup miss", "GET", f"/runs/lookup?scenarioId=fresh&seed={next(_fresh)}", None, {}, {"read", "run"}),
        ("metadata", "GET", f"/runs/{done_run}", None, {}, {"read"}),
        ("runs list", "GET", "/runs?limit=5", None, {}, {"read"}),
        ("events JSON", "GET", f"/runs/{done_run}/events", None, {}, {"read"}),
        ("events SSE", "GET", f"/runs/{done_run}/events", None, {"Accept": "text/event-stream"}, {"read"}),
        ("CSV", "GET", f"/runs/{done_run}/export.csv", None, {}, {"read"}),
        ("snapshot", "GET", f"/runs/{done_run}/snapshot", None, {}, {"read"}),
        ("attestation", "GET", f"/runs/{done_run}/attestation", None, {}, {"read"}),
        ("signing keys", "GET", "/signing-keys", None, {}, set()),  # public keys are public
        ("verify", "POST", f"/runs/{done_run}/verify", None, {}, {"read", "run"}),
        ("compare of cached runs", "POST", "/compare", json.dumps(compare).encode(), json_type, {"read"}),
        ("compare that starts a run", "POST", "/compare", json.dumps(fresh_compare).encode(), json_type,
         {"read", "run"}),
        ("metrics", "GET", "/metrics", None, {}, {"ops"}),
        ("registry stats", "GET", "/registry/stats", None, {}, {"ops"}),
        ("determinism ledger", "GET", "/registry/determinism", None, {}, {"ops"}),
        ("OpenAPI", "GET", "/openapi.json", None, {}, {"read"}),
    ]


@pytest.mark.parametrize("caller", list(CALLERS))
def test_every_route_lets_in_exactly_the_callers_its_scope_names(server, done_run, caller):
    for name, method, path, body, headers, needs in routes(done_run):
        reply = http(method, server.url + path, body, {**headers, **CALLERS[caller]}, timeout=30)
        if needs <= CALLER_SCOPES.get(caller, set()):
            assert reply.status == 200, (name, reply.status, reply.body[:200])
        elif caller in CALLER_SCOPES:  # a key, without the scope
            assert (reply.status, reply.json()["type"]) == (403, "FORBIDDEN"), (name, reply.status)
        else:
            assert (reply.status, reply.json()["type"]) == (401, "UNAUTHORIZED"), (name, reply.status)
            assert reply.headers["WWW-Authenticate"] == 'Bearer realm="run-registry"', name


def test_a_refused_request_starts_counts_and_renews_nothing(server, done_run):
    stats = f"{server.url}/registry/stats"
    before_stats = http("GET", stats, headers=bearer("operator")).json()
    before_run = http("GET", f"{server.url}/runs/{done_run}", headers=bearer("reader")).json()
    fresh = next(_fresh)
    refused = [
        http("GET", f"{server.url}/runs/lookup?scenarioId=fresh&seed={fresh}", headers=bearer("reader")),
        http("POST", f"{server.url}/compare", json.dumps({"left": {"scenarioId": "kept", "seed": 1},
                                                          "right": {"scenarioId": "fresh", "seed": fresh}}).encode(),
             {"Content-Type": "application/json", **bearer("reader")}),
        http("POST", f"{server.url}/runs/{done_run}/verify", headers=bearer("reader")),
        http("GET", f"{server.url}/runs/lookup?scenarioId=kept&seed=1"),
    ]
    assert [reply.status for reply in refused] == [403, 403, 403, 401]
    after_run = http("GET", f"{server.url}/runs/{done_run}", headers=bearer("reader")).json()
    after_stats = http("GET", stats, headers=bearer("operator")).json()
    assert (after_run["hits"], after_run["expiresAt"]) == (before_run["hits"], before_run["expiresAt"])
    counted = ("total_entries", "hits", "misses", "engine_executions")
    assert {name: after_stats[name] for name in counted} == {name: before_stats[name] for name in counted}


def test_old_and_new_keys_work_side_by_side_and_a_removed_one_no_longer(server, tmp_path):
    for key_id in ("ci-old", "ci-new"):  # both, while the clients move from one to the other
        assert http("GET", f"{server.url}/runs/lookup?scenarioId=kept&seed=1", headers=bearer(key_id)).status == 200
    with Gunicorn(tmp_path / "rotated.log", env={"RUN_REGISTRY_API_KEYS": entries("ci-new")}) as rotated:
        lookup = f"{rotated.url}/runs/lookup?scenarioId=kept&seed=1"
        assert http("GET", lookup, headers=bearer("ci-new")).status == 200
        assert http("GET", lookup, headers=bearer("ci-old")).status == 401


def test_anonymous_read_reads_but_never_starts_an_engine(tmp_path):
    env = {"RUN_REGISTRY_API_KEYS": entries("runner", "operator"), "RUN_REGISTRY_ANONYMOUS": "read"}
    with Gunicorn(tmp_path / "anonymous.log", env=env) as server:
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=published&seed=1", headers=bearer("runner")).json()[
            "runId"]
        assert http("GET", f"{server.url}/runs/lookup?scenarioId=published&seed=1").json()["source"] == "cache"
        assert http("GET", f"{server.url}/runs/{run_id}/events").status == 200
        for refused in (http("GET", f"{server.url}/runs/lookup?scenarioId=published&seed=2"),
                        http("POST", f"{server.url}/runs/{run_id}/verify"), http("GET", f"{server.url}/metrics")):
            assert (refused.status, refused.json()["type"]) == (401, "UNAUTHORIZED")
        assert http("GET", f"{server.url}/runs/lookup?scenarioId=published&seed=1",
                    headers={"Authorization": "Bearer wrong"}).status == 401  # a bad key is no anonymous read


def test_the_new_run_limit_counts_per_key_whatever_the_address(tmp_path):
    env = {"RUN_REGISTRY_API_KEYS": entries("runner", "ci-new"), "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "2"}
    with Gunicorn(tmp_path / "limits.log", env=env) as server:
        def start(key_id: str, seed: int) -> int:
            return http("GET", f"{server.url}/runs/lookup?scenarioId=limited&seed={seed}",
                        headers=bearer(key_id)).status

        assert [start("runner", seed) for seed in range(3)] == [200, 200, 429]
        assert [start("ci-new", seed) for seed in range(10, 13)] == [200, 200, 429]  # one address, two budgets
        assert start("runner", 2) == 429
        assert http("GET", f"{server.url}/runs/lookup?scenarioId=limited&seed=0",
                    headers=bearer("runner")).status == 200  # hits never count


def test_no_secret_or_hash_in_any_answer_metric_or_log_line_and_each_line_names_its_key(server, done_run):
    answers = [http(method, server.url + path, body, {**headers, **auth}, timeout=30)
               for _, method, path, body, headers, _ in routes(done_run)
               for auth in (*CALLERS.values(), {"Authorization": f"Bearer {digest(SECRETS['reader'])}"})]
    answers.append(http("GET", f"{server.url}/metrics", headers=bearer("operator")))
    seen = "\n".join(f"{reply.headers}\n{reply.body.decode(errors='replace')}" for reply in answers) + server.log()
    for secret in SECRETS.values():
        assert secret not in seen and digest(secret) not in seen
    lines = [json.loads(line) for line in server.log().splitlines() if '"logger":"app.request"' in line]
    assert {line.get("keyId") for line in lines} >= {"reader", "runner", "operator", None}


def test_a_malformed_key_list_stops_start_up_with_one_line_that_shows_no_hash():
    hash_upper = digest("x").upper()
    for value in (f"ci:{hash_upper}:read", f"ci:{digest('x')}:write", f"ci:{digest('x')}", "c i:abc:read"):
        result = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app", "--bind", "127.0.0.1:0"],
                                cwd=ROOT, env={**os.environ, "RUN_REGISTRY_API_KEYS": value},
                                capture_output=True, text=True, timeout=30)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, lines
        assert "RUN_REGISTRY_API_KEYS" in lines[0] and hash_upper not in lines[0] and digest("x") not in lines[0]


def test_an_open_service_on_an_address_others_reach_says_so_at_start_up_once(tmp_path, server):
    warning = "anyone who reaches it may start runs and read every transcript"
    with Gunicorn(tmp_path / "gunicorn.log", bind=False) as exposed:  # PORT set: 0.0.0.0, as on a host
        log = exposed.log()
    assert log.count(warning) == 1 and f"0.0.0.0:{exposed.port}" in log
    assert warning not in server.log()  # with keys, on 0.0.0.0 too (the module's server): nothing to say


def test_new_key_prints_a_secret_and_the_entry_the_service_takes(tmp_path):
    made = subprocess.run([str(GUNICORN.with_name("run-registry")), "new-key", "deploy-bot", "read+run"],
                          capture_output=True, text=True, timeout=30, check=True)
    lines = dict(line.split(": ", 1) for line in made.stdout.splitlines() if line.startswith(("secret:", "entry:")))
    secret, entry = lines["secret"].strip(), lines["entry"].strip()
    assert entry == f"deploy-bot:{digest(secret)}:read+run" and len(secret) >= 40
    assert secret.startswith("rr_")  # never "-": a command line would take it for an option
    with Gunicorn(tmp_path / "gunicorn.log", env={"RUN_REGISTRY_API_KEYS": entry}) as server:
        assert http("GET", f"{server.url}/runs/lookup?scenarioId=a&seed=1",
                    headers={"Authorization": f"Bearer {secret}"}).status == 200
    refused = subprocess.run([str(GUNICORN.with_name("run-registry")), "new-key", "bad id", "read"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
