"""docs/verifying.md's blocks, run as they are written (but for the port) against a real gunicorn's
pack: the checks with other tools pass a genuine pack and refuse a forged one and another key."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from datetime import UTC
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from app.signing import SigningKey
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import require_binary

pytestmark = pytest.mark.server
DOC = (ROOT / "docs" / "verifying.md").read_text()
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", DOC, re.DOTALL)
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.DOTALL)
CHECKS = [block for block in PYTHON_BLOCKS if "NOT genuine" in block]  # the two verifications


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """pack.zip and signing-keys.json, fetched by the page's own shell block from a real service."""
    require_binary("curl")
    workdir = tmp_path_factory.mktemp("verifying")
    with Gunicorn(workdir / "gunicorn.log") as server:
        script = "set -e\n" + "\n".join(SHELL_BLOCKS).replace("localhost:3001", f"127.0.0.1:{server.port}")
        done = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert zipfile.ZipFile(workdir / "pack.zip").namelist()  # a pack, not an error body
    return workdir


def run_block(block: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A block in a Python of its own, importing nothing of the service (not on its path)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-I", "-c", block], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_page_has_both_checks_the_statement_and_the_conversion():
    assert len(SHELL_BLOCKS) == 1 and len(PYTHON_BLOCKS) == 4 and len(CHECKS) == 2
    assert "import securesystemslib" in CHECKS[0] or "from securesystemslib" in CHECKS[0]
    assert "securesystemslib" not in CHECKS[1] and "in_toto" not in CHECKS[1]
    assert not any(re.search(r"^\s*(from|import) app\b", block, re.MULTILINE) for block in PYTHON_BLOCKS)


def test_every_block_runs_on_a_genuine_pack(workdir):
    manifest = json.loads(zipfile.ZipFile(workdir / "pack.zip").read("manifest.json"))
    key_id = json.loads((workdir / "signing-keys.json").read_text())["keys"][0]["keyId"]
    outputs = []
    for block in PYTHON_BLOCKS:
        done = run_block(block, workdir)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    for output in outputs[:2]:
        assert output.startswith(f"pack.zip: genuine, signed by keyId {key_id}\n")
        assert f"run {manifest['runId']}: scenarioId pricing-v1, seed 42, {manifest['count']} events" in output
    assert outputs[2] == "an in-toto Statement v1 of urn:run-registry:evidence-pack:v1\n"
    created = datetime.fromtimestamp(manifest["createdAt"] / 1000, tz=UTC)
    assert outputs[3] == created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{manifest['createdAt'] % 1000:03d}Z\n"


def repacked(pack: bytes, **changed: bytes) -> bytes:
    files = {info.filename: zipfile.ZipFile(io.BytesIO(pack)).read(info) for info in
             zipfile.ZipFile(io.BytesIO(pack)).infolist()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in {**files, **changed}.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("check", CHECKS, ids=["securesystemslib", "cryptography-alone"])
def test_the_checks_refuse_a_forged_pack_and_another_key(workdir, tmp_path, check):
    pack = (workdir / "pack.zip").read_bytes()
    files = zipfile.ZipFile(io.BytesIO(pack))
    events = files.read("events.json")
    forged_events = events.replace(b'"seed":42', b'"seed":43', 1)
    manifest = json.loads(files.read("manifest.json"))
    manifest["eventsSha256"] = hashlib.sha256(forged_events).hexdigest()
    other = SigningKey.generate()
    cases = {
        "a changed transcript": (repacked(pack, **{"events.json": forged_events}), None,
                                 "events.json is not the file the statement names"),
        "a transcript and manifest changed together": (
            repacked(pack, **{"events.json": forged_events, "manifest.json": json.dumps(manifest).encode()}),
            None, "manifest.json is not the file the statement names"),
        "a file added": (repacked(pack, **{"README.txt": b"trust me"}), None, "it holds"),
        "another key": (pack, {"keys": [{"keyId": other.key_id, "algorithm": "ed25519",
                                         "publicKey": other.public.pem}]}, "no key given signed it"),
    }
    for case, (forged, keys, reason) in cases.items():
        (tmp_path / "pack.zip").write_bytes(forged)
        keys_text = json.dumps(keys) if keys else (workdir / "signing-keys.json").read_text()
        (tmp_path / "signing-keys.json").write_text(keys_text)
        done = run_block(check, tmp_path)
        assert done.returncode == 1, case
        assert done.stdout == "" and done.stderr.startswith(f"pack.zip is NOT genuine: {reason}"), (case, done.stderr)


def test_securesystemslib_refuses_the_key_under_its_own_default_keyid(workdir):
    """What the page warns of: the key built without the service's keyId matches no signature."""
    entry = json.loads((workdir / "signing-keys.json").read_text())["keys"][0]
    public = serialization.load_pem_public_key(entry["publicKey"].encode())
    envelope = Envelope.from_dict(json.loads(zipfile.ZipFile(workdir / "pack.zip").read("attestation.json")))
    default = SSlibKey.from_crypto(public)
    assert default.keyid != entry["keyId"]
    with pytest.raises(VerificationError, match=r"Found: 0, Expected 1"):
        envelope.verify([default], 1)
    assert set(envelope.verify([SSlibKey.from_crypto(public, keyid=entry["keyId"])], 1)) == {entry["keyId"]}
