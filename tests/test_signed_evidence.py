"""Signed evidence on real servers: the fleet's one key on a real redis-server, kept across restarts,
configured keys in both forms, rotation, refusal of a bad key, and the installed verify-pack."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.signing import SigningKey
from harness.servers import GUNICORN
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import free_port
from harness.servers import http
from harness.servers import require_binary
from harness.servers import wait_until

pytestmark = pytest.mark.server
RUN_REGISTRY = GUNICORN.with_name("run-registry")


def signing_keys(server: Gunicorn) -> list[dict]:
    reply = http("GET", f"{server.url}/signing-keys")
    assert reply.status == 200
    return reply.json()["keys"]


def verify_pack(pack: bytes, keys: bytes, tmp_path, name: str = "pack") -> subprocess.CompletedProcess:
    """The installed console script, as an auditor runs it: a file and a key, nothing else."""
    (tmp_path / f"{name}.zip").write_bytes(pack)
    (tmp_path / f"{name}-keys").write_bytes(keys)
    return subprocess.run([str(RUN_REGISTRY), "verify-pack", f"{name}.zip", "--key", f"{name}-keys"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})


def test_the_fleet_signs_with_its_configured_key_across_restarts_and_rotation_keeps_old_packs_checkable(
        redis_server, tmp_path):
    key_file = tmp_path / "fleet-key.pem"
    made = subprocess.run([str(RUN_REGISTRY), "new-signing-key", str(key_file)], capture_output=True, text=True,
                          timeout=30)
    assert made.returncode == 0 and key_file.stat().st_mode & 0o777 == 0o600
    key = SigningKey.from_pem(key_file.read_bytes())
    assert made.stdout.startswith(f"{key_file}: a new Ed25519 signing key, keyId {key.key_id}\n")
    env = {"RUN_REGISTRY_URL": redis_server.url, "RUN_REGISTRY_REDIS_PREFIX": f"signed-{id(tmp_path)}:",
           "WEB_CONCURRENCY": "3", "RUN_REGISTRY_SIGNING_KEY": str(key_file)}
    with Gunicorn(tmp_path / "first.log", env=env) as first:
        run_id = http("GET", f"{first.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
        packs = {http("GET", f"{first.url}/runs/{run_id}/snapshot").body for _ in range(12)}  # any of the workers
        keys = signing_keys(first)
        log = first.log()
        # Redis restarted without its data: every process still lists (and signs with) the one key, at once.
        redis_server.client().flushall()
        assert {json.dumps(signing_keys(first)) for _ in range(12)} == {json.dumps(keys)}
    assert [entry["keyId"] for entry in keys] == [key.key_id]
    assert log.count(f"signed with the configured key (RUN_REGISTRY_SIGNING_KEY), keyId {key.key_id}") == 3
    assert not redis_server.client().keys("*signing*")  # the registry never holds a private key
    assert len(packs) == 1
    pack = packs.pop()

    with Gunicorn(tmp_path / "restarted.log", env=env) as restarted:
        assert signing_keys(restarted) == keys
        again = http("GET", f"{restarted.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
        assert again != run_id  # Redis lost the run; the new one signs with the same key

    checked = verify_pack(pack, keys[0]["publicKey"].encode(), tmp_path)
    assert checked.returncode == 0 and checked.stderr == ""
    assert checked.stdout.splitlines()[0] == f"pack.zip: genuine, signed by keyId {keys[0]['keyId']}"

    # Rotation: a new configured key signs from now on; the old public key is listed after it.
    new_key = SigningKey.generate()
    (tmp_path / "signing-key.pem").write_bytes(new_key.pem())
    (tmp_path / "retired.pem").write_text(keys[0]["publicKey"])
    rotated_env = {**env, "RUN_REGISTRY_SIGNING_KEY": str(tmp_path / "signing-key.pem"),
                   "RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS": str(tmp_path / "retired.pem")}
    with Gunicorn(tmp_path / "rotated.log", env=rotated_env) as rotated:
        listed = http("GET", f"{rotated.url}/signing-keys").body
        run_id = http("GET", f"{rotated.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
        new_pack = http("GET", f"{rotated.url}/runs/{run_id}/snapshot")
    assert [entry["keyId"] for entry in json.loads(listed)["keys"]] == [new_key.key_id, keys[0]["keyId"]]
    assert new_pack.status == 200 and new_pack.body != pack
    old_checked, new_checked = (verify_pack(old_or_new, listed, tmp_path) for old_or_new in (pack, new_pack.body))
    assert old_checked.returncode == 0 and new_checked.returncode == 0  # both checkable with what is listed now
    assert f"genuine, signed by keyId {keys[0]['keyId']}, a retired key" in old_checked.stdout
    assert f"genuine, signed by keyId {new_key.key_id}\n" in new_checked.stdout
    refused = verify_pack(new_pack.body, keys[0]["publicKey"].encode(), tmp_path)
    assert refused.returncode == 1 and "is NOT genuine: not signed by the given key" in refused.stderr


def test_a_fleet_without_a_configured_key_refuses_to_start_saying_how_to_make_one(redis_server, tmp_path):
    result = subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app", "--bind", "127.0.0.1:0"], cwd=ROOT,
        env={**os.environ, "RUN_REGISTRY_URL": redis_server.url, "RUN_REGISTRY_SIGNING_KEY": ""},
        capture_output=True, text=True, timeout=30,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("run-registry: refusing to start: RUN_REGISTRY_SIGNING_KEY is required with a Redis"
                               " registry") and "run-registry new-signing-key" in lines[0]


def test_new_signing_key_never_overwrites_a_file(tmp_path):
    existing = tmp_path / "key.pem"
    existing.write_text("a key in use")
    refused = subprocess.run([str(RUN_REGISTRY), "new-signing-key", str(existing)], capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode == 1 and refused.stdout == "" and existing.read_text() == "a key in use"
    assert refused.stderr == f"run-registry: new-signing-key: {existing} exists; it is not overwritten (a key in use"\
        " would be lost)\n"


def test_a_key_configured_as_pem_text_signs_on_the_embedded_registry(tmp_path):
    key = SigningKey.generate()
    with Gunicorn(tmp_path / "text.log", env={"RUN_REGISTRY_SIGNING_KEY": key.pem().decode()}) as server:
        assert [entry["keyId"] for entry in signing_keys(server)] == [key.key_id]
        run_id = http("GET", f"{server.url}/runs/lookup?scenarioId=pricing-v1&seed=7").json()["runId"]
        pack = http("GET", f"{server.url}/runs/{run_id}/snapshot").body
        log = server.log()
    assert f"the configured key (RUN_REGISTRY_SIGNING_KEY), keyId {key.key_id}" in log
    assert "BEGIN PRIVATE KEY" not in log
    assert verify_pack(pack, key.public.pem.encode(), tmp_path).returncode == 0


@pytest.mark.parametrize("kind", ["rsa-text", "missing-file"])
def test_a_bad_signing_key_stops_start_up_with_one_line_and_no_key_material(tmp_path, kind):
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    value = rsa_pem if kind == "rsa-text" else str(tmp_path / "absent.pem")
    result = subprocess.run(
        [str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app", "--bind", "127.0.0.1:0"], cwd=ROOT,
        env={**os.environ, "RUN_REGISTRY_SIGNING_KEY": value}, capture_output=True, text=True, timeout=30,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, lines
    assert lines[0].startswith("run-registry: refusing to start: RUN_REGISTRY_SIGNING_KEY must be an Ed25519")
    assert not any(line in lines[0] for line in rsa_pem.splitlines()[1:-1])


def test_make_run_redis_makes_the_fleets_key_once_beside_its_redis_password(tmp_path):
    """The Makefile's fleet on one machine: a key made at its first start (mode 0600), the same at the next."""
    require_binary("redis-server")
    redis_port, port = free_port(), free_port()
    made = [ROOT / f".redis-{redis_port}.conf", ROOT / f".signing-key-{redis_port}.pem",
            ROOT / f".redis-{redis_port}.pid", ROOT / f".redis-{redis_port}.log"]
    listed = []
    try:
        for start in range(2):
            with open(tmp_path / f"make-{start}.log", "wb") as log, subprocess.Popen(
                    ["make", "--no-print-directory", "run-redis", f"REDIS_PORT={redis_port}"], cwd=ROOT,
                    env={**os.environ, "PORT": str(port), "RUN_REGISTRY_SIGNING_KEY": ""}, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True) as fleet:
                url = f"http://127.0.0.1:{port}"
                try:
                    wait_until(lambda url=url: _answers(f"{url}/readyz"), timeout=60, every=0.1)
                    listed.append(http("GET", f"{url}/signing-keys").json()["keys"])
                finally:
                    os.killpg(fleet.pid, signal.SIGINT)  # as Ctrl-C does
                    fleet.wait(timeout=30)
        key_file = made[1]
        assert key_file.stat().st_mode & 0o777 == 0o600 and made[0].stat().st_mode & 0o777 == 0o600
        assert listed[0] == listed[1] == [{"keyId": SigningKey.from_pem(key_file.read_bytes()).key_id,
                                           "algorithm": "ed25519", "publicKey": listed[0][0]["publicKey"]}]
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def _answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=2).status == 200
    except OSError:
        return False
