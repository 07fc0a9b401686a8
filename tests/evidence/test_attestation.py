"""Signed evidence (docs/api.md, "Signed evidence"): the attestation, checked by implementations this
project did not write, and the offline check refusing every forgery an auditor would try."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import zipfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey

from app import create_app
from app.cli.main import main as cli
from app.config import ConfigError
from app.config import load_settings
from app.evidence.attestation import PACK_FILES
from app.evidence.attestation import PackRefused
from app.evidence.attestation import check_pack
from app.evidence.attestation import checksums
from app.evidence.attestation import envelope
from app.signing import SigningKey
from app.signing import public_keys_from_pem
from harness.fakes import FakeEngine
from harness.fakes import SteppedEngine
from tests.conftest import test_settings

PREDICATE_FIELDS = ("runId", "scenarioId", "seed", "engineCodeHash", "engine", "cacheKey", "createdAt", "count",
                    "eventsSha256")


def pkcs8(private) -> str:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()


@pytest.fixture
def signing_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def signed_client(signing_key):
    return create_app(test_settings(signing_key=signing_key), engine=FakeEngine()).test_client()


def done_run(client, seed: int = 1) -> str:
    return client.get(f"/runs/lookup?scenarioId=a&seed={seed}").get_json()["runId"]


def pack_of(client, run_id: str) -> bytes:
    response = client.get(f"/runs/{run_id}/snapshot")
    assert response.status_code == 200
    return response.get_data()


def files_of(pack: bytes) -> dict[str, bytes]:
    archive = zipfile.ZipFile(io.BytesIO(pack))
    return {name: archive.read(name) for name in archive.namelist()}


def repacked(files: dict[str, bytes]) -> bytes:
    """A pack as a forger would rebuild it: valid ZIP, CRCs and all."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def public_pem(key: SigningKey) -> bytes:
    return key.public.pem.encode()


def flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def test_the_envelope_verifies_with_securesystemslib_and_the_statement_with_in_toto(signed_client, signing_key):
    run_id = done_run(signed_client)
    files = files_of(pack_of(signed_client, run_id))
    document = json.loads(files["attestation.json"])
    assert set(document) == {"payloadType", "payload", "signatures"}
    assert document["signatures"][0]["keyid"] == signing_key.key_id

    independent_key = SSlibKey.from_crypto(serialization.load_pem_public_key(public_pem(signing_key)),
                                           keyid=signing_key.key_id)
    dsse = Envelope.from_dict(document)
    assert set(dsse.verify([independent_key], 1)) == {signing_key.key_id}
    dsse.payload = dsse.payload.replace(b'"seed":1', b'"seed":2')  # securesystemslib does check what it is given
    with pytest.raises(VerificationError):
        dsse.verify([independent_key], 1)

    payload = base64.b64decode(document["payload"], validate=True)
    Statement.copy_from_pb(json_format.Parse(payload, statement_pb2.Statement())).validate()
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "urn:run-registry:evidence-pack:v1"
    assert statement["subject"] == [{"name": name, "digest": {"sha256": hashlib.sha256(files[name]).hexdigest()}}
                                    for name in ("manifest.json", "events.json", "events.csv")]
    manifest = json.loads(files["manifest.json"])
    metadata = signed_client.get(f"/runs/{run_id}").get_json()
    assert statement["predicate"] == {field: manifest[field] for field in PREDICATE_FIELDS}
    assert statement["predicate"] == {field: metadata[field] for field in PREDICATE_FIELDS}
    assert files["SHA256SUMS"].decode().splitlines()[3] == (
        f"{hashlib.sha256(files['attestation.json']).hexdigest()}  attestation.json")


def test_the_attestation_alone_is_the_packs_with_an_etag_naming_the_key(signed_client, signing_key):
    run_id = done_run(signed_client)
    alone = signed_client.get(f"/runs/{run_id}/attestation")
    assert alone.status_code == 200 and alone.mimetype == "application/json"
    assert alone.get_data() == files_of(pack_of(signed_client, run_id))["attestation.json"]
    tag = alone.headers["ETag"]
    assert tag.endswith(f'-attestation.{signing_key.key_id[:16]}"')
    again = signed_client.get(f"/runs/{run_id}/attestation", headers={"If-None-Match": tag})
    assert (again.status_code, again.get_data(), again.headers["ETag"]) == (304, b"", tag)
    assert signed_client.get(f"/runs/{run_id}/snapshot").headers["ETag"].endswith(f'-zip.{signing_key.key_id[:16]}"')


def test_a_running_runs_attestation_is_202_then_the_signed_one():
    engine = SteppedEngine()
    client = create_app(test_settings(), engine=engine).test_client()
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1", headers={"Prefer": "respond-async"}).get_json()["runId"]
    pending = client.get(f"/runs/{run_id}/attestation", headers={"Prefer": "wait=0"})
    assert pending.status_code == 202
    assert pending.get_json() == {"runId": run_id, "status": "running", "count": 0}
    engine.step(10)
    done = client.get(f"/runs/{run_id}/attestation", headers={"Prefer": "wait=5"})
    assert done.status_code == 200 and json.loads(done.get_data())["payloadType"] == "application/vnd.in-toto+json"


def test_a_genuine_pack_passes_the_offline_check(signed_client, signing_key):
    run_id = done_run(signed_client)
    checked = check_pack(pack_of(signed_client, run_id), [signing_key.public])
    assert checked.key_id == signing_key.key_id and checked.predicate["runId"] == run_id


def test_the_auditors_forgery_is_refused(signed_client, signing_key):
    """A number changed in events.json and events.csv, every digest of manifest.json and SHA256SUMS recomputed."""
    files = files_of(pack_of(signed_client, done_run(signed_client)))
    files["events.json"] = files["events.json"].replace(b'"seed":1', b'"seed":9')
    files["events.csv"] = files["events.csv"].replace(b'"seed"":1', b'"seed"":9')
    manifest = json.loads(files["manifest.json"])
    manifest["files"] = {name: hashlib.sha256(files[name]).hexdigest() for name in ("events.json", "events.csv")}
    manifest["eventsSha256"] = manifest["files"]["events.json"]
    files["manifest.json"] = json.dumps(manifest, indent=2).encode() + b"\n"
    files["SHA256SUMS"] = checksums({name: files[name] for name in PACK_FILES[:-1]})
    with pytest.raises(PackRefused, match=r"manifest\.json is not the file the signed statement names"):
        check_pack(repacked(files), [signing_key.public])


@pytest.mark.parametrize("name", PACK_FILES)
def test_a_changed_byte_in_any_file_is_refused_whether_or_not_the_zip_is_rebuilt(signed_client, signing_key, name):
    pack = pack_of(signed_client, done_run(signed_client))
    files = files_of(pack)
    # In place: the ZIP's own CRC says so.
    offset = pack.index(files[name]) + len(files[name]) // 2
    in_place = pack[:offset] + bytes([pack[offset] ^ 0x01]) + pack[offset + 1:]
    with pytest.raises(PackRefused, match=name):
        check_pack(in_place, [signing_key.public])
    # Rebuilt with fresh CRCs, and SHA256SUMS recomputed unless it is the file changed: the signature says so.
    files[name] = flipped(files[name])
    if name != "SHA256SUMS":
        files["SHA256SUMS"] = checksums({other: files[other] for other in PACK_FILES[:-1]})
    with pytest.raises(PackRefused):
        check_pack(repacked(files), [signing_key.public])


@pytest.mark.parametrize("name", PACK_FILES)
def test_a_missing_file_is_refused(signed_client, signing_key, name):
    files = files_of(pack_of(signed_client, done_run(signed_client)))
    del files[name]
    with pytest.raises(PackRefused, match=f"{name} missing"):
        check_pack(repacked(files), [signing_key.public])


def test_an_added_file_or_a_name_twice_is_refused(signed_client, signing_key):
    files = files_of(pack_of(signed_client, done_run(signed_client)))
    with pytest.raises(PackRefused, match=r"holds files an evidence pack does not: 'README\.txt'"):
        check_pack(repacked({**files, "README.txt": b"trust me"}), [signing_key.public])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("events.json", b"[]")
    with pytest.raises(PackRefused, match="twice"):
        check_pack(out.getvalue(), [signing_key.public])


def test_a_pack_signed_by_another_key_is_refused(signed_client, signing_key):
    other = create_app(test_settings(), engine=FakeEngine()).test_client()  # its own key, made at start-up
    with pytest.raises(PackRefused, match="not signed by the given key"):
        check_pack(pack_of(other, done_run(other)), [signing_key.public])


def test_a_pack_signed_by_a_retired_key_passes_saying_so(signed_client, signing_key):
    retired = SigningKey.generate()
    keys = [signing_key.public, retired.public]  # as GET /signing-keys lists them: the key in use first
    old_client = create_app(test_settings(signing_key=retired), engine=FakeEngine()).test_client()
    old_pack = pack_of(old_client, done_run(old_client))
    checked = check_pack(old_pack, keys)
    assert (checked.key_id, checked.retired) == (retired.key_id, True)
    assert check_pack(old_pack, [retired.public]).retired is False  # the first key given is the one in use
    checked = check_pack(pack_of(signed_client, done_run(signed_client)), keys)
    assert (checked.key_id, checked.retired) == (signing_key.key_id, False)

    # Signed by both, it is the key in use's, whichever signature comes first.
    files = files_of(old_pack)
    document = json.loads(files["attestation.json"])
    document["signatures"].append(json.loads(envelope(base64.b64decode(document["payload"]), signing_key))[
        "signatures"][0])
    files["attestation.json"] = json.dumps(document).encode()
    files["SHA256SUMS"] = checksums({name: files[name] for name in PACK_FILES[:-1]})
    checked = check_pack(repacked(files), keys)
    assert (checked.key_id, checked.retired) == (signing_key.key_id, False)


def test_a_statement_signed_by_another_key_under_this_keys_id_is_refused(signed_client, signing_key):
    files = files_of(pack_of(signed_client, done_run(signed_client)))
    forged = json.loads(envelope(base64.b64decode(json.loads(files["attestation.json"])["payload"]),
                                 SigningKey.generate()))
    forged["signatures"][0]["keyid"] = signing_key.key_id
    files["attestation.json"] = json.dumps(forged).encode()
    files["SHA256SUMS"] = checksums({name: files[name] for name in PACK_FILES[:-1]})
    with pytest.raises(PackRefused, match="not signed by the given key"):
        check_pack(repacked(files), [signing_key.public])


def _envelope_edits():
    return {
        "not JSON": lambda document: b"{",
        "a list": lambda document: b"[]",
        "another payloadType": lambda document: {**document, "payloadType": "application/json"},
        "payload not base64": lambda document: {**document, "payload": "%%%"},
        "no signatures": lambda document: {**document, "signatures": []},
        "signature not base64": lambda document: {**document, "signatures": [{"keyid": "k", "sig": "***"}]},
        "signature not an object": lambda document: {**document, "signatures": ["x"]},
        "a signature of other bytes": lambda document: {
            **document, "payload": base64.b64encode(base64.b64decode(document["payload"]) + b" ").decode()},
    }


@pytest.mark.parametrize("edit", _envelope_edits().values(), ids=_envelope_edits().keys())
def test_a_malformed_envelope_is_refused(signed_client, signing_key, edit):
    files = files_of(pack_of(signed_client, done_run(signed_client)))
    edited = edit(json.loads(files["attestation.json"]))
    files["attestation.json"] = edited if isinstance(edited, bytes) else json.dumps(edited).encode()
    files["SHA256SUMS"] = checksums({name: files[name] for name in PACK_FILES[:-1]})
    with pytest.raises(PackRefused, match=r"attestation\.json|not signed"):
        check_pack(repacked(files), [signing_key.public])


def test_what_is_no_zip_at_all_is_refused(signing_key):
    for junk in (b"", b"PK\x03\x04 not really", b"x" * 1000):
        with pytest.raises(PackRefused, match="not a ZIP file"):
            check_pack(junk, [signing_key.public])


def test_signing_keys_lists_the_key_in_use_then_retired_ones_by_the_hash_of_their_der(signing_key):
    retired = [SigningKey.generate() for _ in range(2)]
    previous = "".join(key.public.pem for key in (*retired, signing_key))  # the current one again: listed once
    settings = test_settings(**vars(load_settings({"RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS": previous})) | {
        "signing_key": signing_key, "engine_code_hash": "test-code-hash", "new_runs_per_minute": 0})
    listed = create_app(settings, engine=FakeEngine()).test_client().get("/signing-keys").get_json()["keys"]
    assert [key["keyId"] for key in listed] == [key.key_id for key in (signing_key, *retired)]
    for entry in listed:
        public = serialization.load_pem_public_key(entry["publicKey"].encode())
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert entry["keyId"] == hashlib.sha256(der).hexdigest() and entry["algorithm"] == "ed25519"


def test_a_configured_key_is_read_from_its_text_a_one_line_form_or_a_file(tmp_path):
    key = Ed25519PrivateKey.generate()
    pem = pkcs8(key)
    expected = SigningKey.of(key).key_id
    path = tmp_path / "signing-key.pem"
    path.write_text(pem)
    for value in (pem, pem.replace("\n", "\\n"), str(path), f"  {path}\n"):
        assert load_settings({"RUN_REGISTRY_SIGNING_KEY": value}).signing_key.key_id == expected
    assert "PRIVATE" not in repr(load_settings({"RUN_REGISTRY_SIGNING_KEY": pem}))  # settings may be logged


def test_a_bad_signing_key_refuses_with_one_line_and_no_key_material(tmp_path):
    rsa_pem = pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ed_pem = pkcs8(Ed25519PrivateKey.generate())
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")).decode()
    public = SigningKey.generate().public.pem
    (tmp_path / "big").write_bytes(b"x" * 70_000)
    cases = {
        rsa_pem: "is a RSA key, not an Ed25519 one",
        encrypted: "is not a PKCS#8 PEM private key",
        public: "is not a PKCS#8 PEM private key",
        ed_pem.replace(ed_pem.splitlines()[1], ed_pem.splitlines()[1][:20]): "is not a readable PKCS#8 PEM private key",
        str(tmp_path / "missing.pem"): "is neither PEM text nor a readable file (No such file or directory)",
        str(tmp_path / "big"): "names a file of more than 65536 bytes",
        str(tmp_path): "is neither PEM text nor a readable file (Is a directory)",
    }
    for value, reason in cases.items():
        with pytest.raises(ConfigError) as refused:
            load_settings({"RUN_REGISTRY_SIGNING_KEY": value})
        message = str(refused.value)
        assert message.startswith("RUN_REGISTRY_SIGNING_KEY must be an Ed25519 private key in PKCS#8 PEM")
        assert reason in message and "\n" not in message
        for line in value.splitlines()[1:-1]:  # no line of the key's base64 is echoed
            assert line not in message
    with pytest.raises(ConfigError, match=r"RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS .*public key 1 is not an Ed25519 key"):
        load_settings({"RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS": serialization.load_pem_private_key(
            rsa_pem.encode(), None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()})


def test_the_start_up_log_says_a_key_was_made_or_configured(signing_key, caplog):
    caplog.set_level("INFO", logger="app.evidence.keys")
    create_app(test_settings(), engine=FakeEngine())
    create_app(test_settings(signing_key=signing_key), engine=FakeEngine())
    made, configured = (record.getMessage() for record in caplog.records)
    assert "a key made at start-up, not configured (RUN_REGISTRY_SIGNING_KEY unset)" in made
    assert f"the configured key (RUN_REGISTRY_SIGNING_KEY), keyId {signing_key.key_id}" in configured


def test_verify_pack_says_genuine_or_exits_non_zero_with_one_line_naming_the_problem(
        signed_client, signing_key, tmp_path, capsys):
    run_id = done_run(signed_client)
    pack_path, key_path, keys_json = tmp_path / "pack.zip", tmp_path / "key.pem", tmp_path / "keys.json"
    pack_path.write_bytes(pack_of(signed_client, run_id))
    key_path.write_bytes(public_pem(signing_key))
    keys_json.write_bytes(signed_client.get("/signing-keys").get_data())
    for key in (key_path, keys_json):
        assert cli(["verify-pack", str(pack_path), "--key", str(key)]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{pack_path}: genuine, signed by keyId {signing_key.key_id}\n")
        assert f"run {run_id}: scenarioId a, seed 1, 5 events" in out
    other_key = tmp_path / "other.pem"
    other_key.write_bytes(public_pem(SigningKey.generate()))
    forged = tmp_path / "forged.zip"
    files = files_of(pack_path.read_bytes())
    forged.write_bytes(repacked({**files, "events.csv": flipped(files["events.csv"])}))
    refusals = {
        (str(pack_path), str(other_key)): (1, "is NOT genuine: not signed by the given key"),
        (str(forged), str(key_path)): (1, "is NOT genuine: events.csv is not the file the signed statement names"),
        (str(key_path), str(key_path)): (1, "is NOT genuine: not a ZIP file"),
        (str(tmp_path / "none.zip"), str(key_path)): (2, "none.zip: No such file or directory"),
        (str(pack_path), str(pack_path)): (2, "holds no PEM public key"),
    }
    for (pack, key), (status, message) in refusals.items():
        assert cli(["verify-pack", pack, "--key", key]) == status
        captured = capsys.readouterr()
        assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1, captured.err


def test_verify_pack_needs_neither_the_service_nor_its_libraries(signed_client, signing_key, tmp_path):
    (tmp_path / "pack.zip").write_bytes(pack_of(signed_client, done_run(signed_client)))
    (tmp_path / "key.pem").write_bytes(public_pem(signing_key))
    probe = ("import sys; from app.cli.main import main;"
             " status = main(['verify-pack', 'pack.zip', '--key', 'key.pem']);"
             "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'werkzeug', 'redis', 'gevent',"
             " 'marshmallow', 'rq', 'app.runs.service'}); print(status, loaded)")
    env = {"PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr


def test_public_keys_from_pem_reads_every_key_of_a_file():
    keys = [SigningKey.generate() for _ in range(3)]
    assert [key.key_id for key in public_keys_from_pem("".join(k.public.pem for k in keys).encode())] == [
        key.key_id for key in keys]
