"""The examples of the README and of docs/api.md, run verbatim (but for the port: the
service's URL for run-registry, and the path of the .venv's commands) against a real gunicorn."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from harness.servers import GUNICORN
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import require_binary

pytestmark = pytest.mark.server


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.DOTALL)


def readme_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return shell_blocks(readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0])


def api_doc_blocks() -> list[str]:
    return shell_blocks((ROOT / "docs" / "api.md").read_text())


@pytest.fixture(scope="module")
def run_examples(tmp_path_factory):
    """Runs one document's blocks as one script against the server, in the order given."""
    require_binary("curl")
    workdir = tmp_path_factory.mktemp("examples")
    with Gunicorn(workdir / "gunicorn.log") as server:
        def run(blocks: list[str]) -> str:
            script = "set -e\n" + "\n".join(blocks).replace("localhost:3001", f"127.0.0.1:{server.port}").replace(
                ".venv/bin/", f"{GUNICORN.parent}/")
            result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=workdir,
                                    env={**os.environ, "RUN_REGISTRY_SERVICE_URL": server.url})
            assert result.returncode == 0, result.stderr + result.stdout
            return result.stdout
        yield run


def test_readme_examples_work(run_examples):
    output = run_examples(readme_blocks())
    for expected in (
        '"source":"new"', '"source":"cache"', '"events":[{"data":{"scenarioId":"pricing-v1","seed":42',
        '"count":147', "retry: 3000", "event: start", '"seed":7', "id: 147", "event: done",
        "seed must be a valid integer", ".zip: genuine, signed by keyId",
        ": scenarioId pricing-v1, seed 42, 147 events", "-pack.zip: ", '"reproducible": true',
        "deterministic: both executions' transcripts are byte-identical", "engineCodeHash: ",
    ):
        assert expected in output, expected
    assert "not found" not in output and "NOT_FOUND" not in output


def test_api_doc_examples_work(run_examples):
    output = run_examples(api_doc_blocks())
    for expected in (
        "scenarioId and seed parameters required", "Run non-existent-run not found",
        "Method not allowed for this endpoint",
        "event: start", "id: 147", "event: done", "<!doctype html>",
        "manifest.json: OK", "events.json: OK", "events.csv: OK", "attestation.json: OK",
        "position,type,tokenIndex,text,data", ".zip: genuine, signed by keyId", "refused: exit 1",
        "urn:run-registry:evidence-pack:v1", '"checks":2,"reproduced":2,"diverged":0,"divergences":[]',
        '"reproducible":true', '"identical":false', "left: seed must be a valid integer",
        "Last-Event-ID 999 is not a position in this run (1 to 147)",
        '{"status":"ok"}', '"status":"ready"', '"hit_ratio":', 'run_registry_lookups_total{source="new"}',
        "'/runs/lookup'", '"status":"running"', "HTTP/1.1 202", "Cache-Status: run-registry; fwd=miss",
        "Preference-Applied: respond-async", "done 147", "304",
    ):
        assert expected in output, expected
    # Only the errors the document shows on purpose: no example reads a run it did not look up.
    assert output.count("not found") == 1 and "NOT_FOUND" not in output
    # The digest recomputed in the shell equals the one the service reports.
    digests = re.findall(r"\b[0-9a-f]{64}\b", output)
    assert digests and any(output.count(f'"eventsSha256":"{d}"') for d in digests)
