"""The README's curl examples, run verbatim (but for the port) against a real gunicorn."""

from __future__ import annotations

import re
import subprocess

import pytest

from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import require_binary

pytestmark = pytest.mark.server


def using_it_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def test_readme_examples_work(tmp_path):
    require_binary("curl")
    blocks = using_it_blocks()
    assert len(blocks) >= 3
    with Gunicorn(tmp_path / "gunicorn.log") as server:
        script = "set -e\n" + "\n".join(blocks).replace("localhost:3001", f"127.0.0.1:{server.port}")
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    output = result.stdout
    assert result.returncode == 0, result.stderr + output
    for expected in (
        '"source":"new"', '"source":"cache"', "scenarioId and seed parameters required",
        "seed must be a valid integer", "Run non-existent-run not found",
        "event: start", "id: 147", "event: done", "<!doctype html>",
        "manifest.json: OK", "events.json: OK", "events.csv: OK", "position,type,tokenIndex,text,data",
        '"reproducible":true', '"identical":false', "left: seed must be a valid integer",
        "Last-Event-ID 999 is not a position in this run (1 to 147)",
        '{"status":"ok"}', '"status":"ready"', '"hit_ratio":', 'run_registry_lookups_total{source="new"}',
        "'/runs/lookup'", '"status":"running"', "HTTP/1.1 202", "Cache-Status: run-registry; fwd=miss",
        "Preference-Applied: respond-async", "done 147", "304",
    ):
        assert expected in output, expected
    assert "NOT_FOUND" not in output and "METHOD_NOT_ALLOWED" not in output
    # The digest recomputed in the shell equals the one the service reports.
    digests = re.findall(r"\b[0-9a-f]{64}\b", output)
    assert digests and any(output.count(f'"eventsSha256":"{d}"') for d in digests)
