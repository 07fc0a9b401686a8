"""The evidence endpoints: ZIP pack, CSV export, replay page, verify."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import zipfile

import pytest

from app import create_app
from app.registry.memory import MemoryRegistry
from harness.fakes import FORMULA_TEXTS
from harness.fakes import ChangingEngine
from harness.fakes import FakeEngine
from harness.fakes import FormulaEngine
from harness.fakes import transcript
from tests.conftest import test_settings


def new_run(client, query="scenarioId=a&seed=1"):
    return client.get(f"/runs/lookup?{query}").get_json()["runId"]


def test_snapshot_is_a_zip_download_of_the_whole_run(fake_client):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/snapshot")
    assert response.status_code == 200
    assert response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{run_id}.zip"'
    pack = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert pack.namelist() == ["manifest.json", "events.json", "events.csv", "attestation.json", "SHA256SUMS"]
    metadata = fake_client.get(f"/runs/{run_id}").get_json()
    manifest = json.loads(pack.read("manifest.json"))
    assert manifest == {
        **{key: metadata[key] for key in ("runId", "scenarioId", "seed", "engine", "engineCodeHash", "cacheKey",
                                          "createdAt", "count", "eventsSha256")},
        "files": {name: hashlib.sha256(pack.read(name)).hexdigest() for name in ("events.json", "events.csv")},
    }
    assert json.loads(pack.read("events.json")) == transcript("a", 1)
    assert hashlib.sha256(pack.read("events.json")).hexdigest() == metadata["eventsSha256"]
    assert pack.read("events.csv") == fake_client.get(f"/runs/{run_id}/export.csv").get_data()


def test_snapshot_checksums_pass_sha256sum(fake_client, tmp_path):
    if shutil.which("sha256sum") is None:
        pytest.fail("sha256sum (coreutils) is needed to check the evidence pack")
    run_id = new_run(fake_client)
    zipfile.ZipFile(io.BytesIO(fake_client.get(f"/runs/{run_id}/snapshot").get_data())).extractall(tmp_path)
    result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": OK") == 4


def test_snapshot_bytes_never_change_for_a_run(fake_client, frozen):
    run_id = new_run(fake_client)
    first = fake_client.get(f"/runs/{run_id}/snapshot").get_data()
    frozen.tick(600)
    fake_client.get("/runs/lookup?scenarioId=a&seed=1")  # a hit changes hits and expiresAt, not the pack
    assert fake_client.get(f"/runs/{run_id}/snapshot").get_data() == first
    info = zipfile.ZipFile(io.BytesIO(first)).infolist()[0]
    assert info.date_time == (2026, 11, 26, 12, 0, 0)  # the run's createdAt, not the download's time


def test_csv_export_is_one_row_per_event(fake_client):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/export.csv")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{run_id}.csv"'
    rows = list(csv.reader(io.StringIO(response.get_data().decode("utf-8"), newline="")))
    assert rows[0] == ["position", "type", "tokenIndex", "text", "data"]
    events = transcript("a", 1)
    assert [row[:2] for row in rows[1:]] == [[str(n), e["type"]] for n, e in enumerate(events, 1)]
    assert rows[2] == ["2", "token", "1", "Évaluation", '{"text":"Évaluation","tokenIndex":1}']
    assert [json.loads(row[4]) for row in rows[1:]] == [e["data"] for e in events]


def test_csv_neutralises_cells_a_spreadsheet_would_evaluate(settings):
    client = create_app(settings, engine=FormulaEngine()).test_client()
    run_id = new_run(client)
    rows = list(csv.reader(io.StringIO(client.get(f"/runs/{run_id}/export.csv").get_data().decode(), newline="")))
    texts = [row[3] for row in rows[2:2 + len(FORMULA_TEXTS)]]
    assert texts == ["'" + text for text in FORMULA_TEXTS[:-1]] + ["safe -1"]
    for row in rows[1:]:
        for cell in row:
            assert not cell.lstrip(" ").startswith(("=", "+", "-", "@", "\t", "\r")), row


@pytest.mark.parametrize("path", ["snapshot", "export.csv", "replay"])
def test_evidence_of_an_unknown_run_is_the_json_404(client, path):
    response = client.get(f"/runs/nope/{path}")
    assert response.status_code == 404
    assert response.get_json() == {"type": "BAD_INPUT", "message": "Run nope not found"}


def test_replay_page_is_self_contained_html_with_a_strict_policy(fake_client):
    run_id = new_run(fake_client)
    response = fake_client.get(f"/runs/{run_id}/replay")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "EventSource" in page and "src=" not in page
    # The one address in the page is uPlot's banner comment: nothing is fetched from anywhere.
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"https://github.com/leeoniya/uPlot"}
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "'unsafe-inline'" not in policy
    assert run_id not in page  # the page is the same bytes for every run: nothing to inject into


def test_verify_reports_a_reproducible_run(client):
    run_id = new_run(client, "scenarioId=pricing-v1&seed=42")
    digest = client.get(f"/runs/{run_id}").get_json()["eventsSha256"]
    response = client.post(f"/runs/{run_id}/verify")
    assert response.status_code == 200
    body = response.get_json()
    assert body.pop("durationMs") >= 0
    assert body == {"runId": run_id, "reproducible": True, "recordedSha256": digest, "replayedSha256": digest,
                    "firstDifference": None, "recordedCount": 147, "replayedCount": 147, "determinism": {
                        "status": "reproduced", "checks": 1, "divergences": 0,
                        "reference": {"runId": run_id, "eventsSha256": digest,
                                      "createdAt": int(run_id.rsplit("_", 1)[1])}}}


def test_verify_reports_a_non_deterministic_engine_honestly(settings):
    engine = ChangingEngine()
    client = create_app(settings, engine=engine).test_client()
    run_id = new_run(client)
    body = client.post(f"/runs/{run_id}/verify").get_json()
    assert body["reproducible"] is False
    assert body["firstDifference"] == 3
    assert body["recordedSha256"] != body["replayedSha256"]
    assert engine.calls == 2
    assert client.get(f"/runs/{run_id}").get_json()["eventsSha256"] == body["recordedSha256"]  # record untouched


def test_verify_of_a_run_recorded_by_other_engine_code_is_a_conflict():
    """Two deploys sharing one registry: the old deploy's runs cannot be verified by the new code."""
    shared = MemoryRegistry(ttl_ms=60_000, max_entries=100)
    old = create_app(test_settings(engine_code_hash="old-code"), engine=FakeEngine(), registry=shared)
    new = create_app(test_settings(engine_code_hash="new-code"), engine=FakeEngine(), registry=shared)
    run_id = new_run(old.test_client())
    response = new.test_client().post(f"/runs/{run_id}/verify")
    assert response.status_code == 409
    assert response.get_json() == {
        "type": "ENGINE_MISMATCH",
        "message": f"Run {run_id} was recorded under engineCodeHash old-code; this service runs new-code",
    }


def test_verify_of_an_unknown_run_is_404_and_wrong_method_405(client):
    assert client.post("/runs/nope/verify").status_code == 404
    assert client.get("/runs/nope/verify").get_json()["type"] == "METHOD_NOT_ALLOWED"


def test_verify_when_the_engine_fails_is_engine_error(settings):
    engine = FakeEngine()
    client = create_app(settings, engine=engine).test_client()
    run_id = new_run(client)
    engine.failures = 1
    response = client.post(f"/runs/{run_id}/verify")
    assert response.status_code == 500 and response.get_json()["type"] == "ENGINE_ERROR"


def test_every_response_says_nosniff(fake_client):
    run_id = new_run(fake_client)
    for path in ("/runs/lookup?scenarioId=a&seed=1", f"/runs/{run_id}/events", f"/runs/{run_id}/snapshot",
                 f"/runs/{run_id}/replay", "/nope"):
        assert fake_client.get(path).headers["X-Content-Type-Options"] == "nosniff"

