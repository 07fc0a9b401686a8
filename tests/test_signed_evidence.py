"""Signed evidence on real servers: the fleet's one key on a real redis-server, kept across restarts,
configured keys in both forms, rotation, refusal of a bad key, and the installed verify-pack."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.signing import SigningKey
from harness.servers import GUNICORN
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import http

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


def test_the_fleets_key_is_made_once_kept_across_restarts_and_rotated_with_old_packs_still_checkable(
        redis_server, tmp_path):
    env = {"RUN_REGISTRY_URL": redis_server.url, "RUN_REGISTRY_REDIS_PREFIX": f"signed-{id(tmp_path)}:",
           "WEB_CONCURRENCY": "3"}
    with Gunicorn(tmp_path / "first.log", env=env) as first:
        run_id = http("GET", f"{first.url}/runs/lookup?scenarioId=pricing-v1&seed=42").json()["runId"]
        packs = {http("GET", f"{first.url}/runs/{run_id}/snapshot").body for _ in range(12)}  # any of the workers
        keys = signing_keys(first)
        log = first.log()
    # Three processes started at once, each with a key of its own: all sign with the one kept.
    announced = re.findall(r"evidence is signed with a key made, not configured .*? keyId ([0-9a-f]{64})", log)
    assert len(announced) == 3 and set(announced) == {keys[0]["keyId"]}, log
    assert len(packs) == 1
    pack = packs.pop()

    with Gunicorn(tmp_path / "restarted.log", env=env) as restarted:
        assert signing_keys(restarted) == keys
        assert http("GET", f"{restarted.url}/runs/{run_id}/snapshot").body == pack

    checked = verify_pack(pack, keys[0]["publicKey"].encode(), tmp_path)
    assert checked.returncode == 0 and checked.stderr == ""
    assert checked.stdout.splitlines()[0] == f"pack.zip: genuine, signed by keyId {keys[0]['keyId']}"

    # Rotation: a configured key (as a file) signs from now on; the old public key is listed after it.
    new_key = SigningKey.generate()
    (tmp_path / "signing-key.pem").write_bytes(new_key.pem())
    (tmp_path / "retired.pem").write_text(keys[0]["publicKey"])
    rotated_env = {**env, "RUN_REGISTRY_SIGNING_KEY": str(tmp_path / "signing-key.pem"),
                   "RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS": str(tmp_path / "retired.pem")}
    with Gunicorn(tmp_path / "rotated.log", env=rotated_env) as rotated:
        listed = http("GET", f"{rotated.url}/signing-keys").body
        new_pack = http("GET", f"{rotated.url}/runs/{run_id}/snapshot")
        log = rotated.log()
    assert [key["keyId"] for key in json.loads(listed)["keys"]] == [new_key.key_id, keys[0]["keyId"]]
    assert new_pack.status == 200 and new_pack.body != pack
    assert log.count(f"signed with the configured key (RUN_REGISTRY_SIGNING_KEY), keyId {new_key.key_id}") == 3
    for old_or_new in (pack, new_pack.body):  # both checkable with what /signing-keys lists now
        assert verify_pack(old_or_new, listed, tmp_path).returncode == 0
    refused = verify_pack(new_pack.body, keys[0]["publicKey"].encode(), tmp_path)
    assert refused.returncode == 1 and "is NOT genuine: not signed by the given key" in refused.stderr


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
