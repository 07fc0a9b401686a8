"""The examples of the README and of docs/api.md, run verbatim (but for the port: the
service's URL for run-registry, and the path of the .venv's commands) against a real gunicorn;
the README's commands piped into head once more with a reader gone before they print."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def piped_into_head(blocks: list[str]) -> list[str]:
    """The run-registry commands the blocks pipe into head, without the pipe."""
    return [line.split(" | head", 1)[0] for block in blocks for line in block.splitlines()
            if "run-registry " in line and " | head" in line and not line.lstrip().startswith("#")]


# Whether ``| head`` closes its end before or after the command has printed is a race (6 of 6 tries
# lost it once, 4 of 6 others): here the reader has gone before the command starts, every time.
READER_GONE = """
reader_gone() {  # "$@", its standard output a pipe nobody reads any more; says how it ended
  "$PYTHON" -c '
import os, signal, subprocess, sys
reader, writer = os.pipe()
os.close(reader)
status = subprocess.run(sys.argv[1:], stdout=writer).returncode
print("reader gone:", sys.argv[2], "ended by SIGPIPE" if status == -signal.SIGPIPE else f"exited {status}")' "$@"
}
"""


def run_script(server: Gunicorn, blocks: list[str], workdir) -> str:
    """Runs the blocks as one script against the server, in the order given; its standard output."""
    script = "set -e\n" + "\n".join(blocks).replace("localhost:3001", f"127.0.0.1:{server.port}").replace(
        ".venv/bin/", f"{GUNICORN.parent}/")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=workdir,
                            env={**os.environ, "RUN_REGISTRY_SERVICE_URL": server.url, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr + result.stdout
    # set -e sees a pipeline's last command only: what the others said is in stderr.
    assert "Broken pipe" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def run_examples(tmp_path_factory):
    """Runs one document's blocks as one script against the server, in the order given."""
    require_binary("curl")
    workdir = tmp_path_factory.mktemp("examples")
    with Gunicorn(workdir / "gunicorn.log") as server:
        yield lambda blocks: run_script(server, blocks, workdir)


def test_readme_examples_work(run_examples):
    output = run_examples(readme_blocks())
    for expected in (
        '"source":"new"', '"source":"cache"', '"events":[{"data":{"scenarioId":"pricing-v1","seed":42',
        '"count":147', "retry: 3000", "event: start", '"seed":7', "id: 147", "event: done",
        "seed must be a valid integer", ".zip: genuine, signed by keyId",
        ": scenarioId pricing-v1, seed 42, 147 events", "-pack.zip: ", '"reproducible": true',
        "deterministic: both executions' transcripts are byte-identical", "engineCodeHash: ", "status        done\n",
    ):
        assert expected in output, expected
    assert "not found" not in output and "NOT_FOUND" not in output


def test_readmes_commands_piped_into_head_end_quietly_when_the_reader_has_gone(tmp_path):
    # A server of its own: docs/api.md's examples count the README's verifies in the ledger.
    piped = piped_into_head(readme_blocks())
    assert [command.split()[1] for command in piped] == ["events", "verify", "compare"]
    with Gunicorn(tmp_path / "gunicorn.log") as server:
        output = run_script(server, ["RUN=$(.venv/bin/run-registry lookup pricing-v1 42)", READER_GONE,
                                     *(f"reader_gone {command}" for command in piped)], tmp_path)
    assert output.splitlines() == [f"reader gone: {command.split()[1]} ended by SIGPIPE" for command in piped]


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
        "Preference-Applied: respond-async", "done 147", "304", '{"runs":[{"runId":"run_pricing-v',
    ):
        assert expected in output, expected
    # Only the errors the document shows on purpose: no example reads a run it did not look up.
    assert output.count("not found") == 1 and "NOT_FOUND" not in output
    # The digest recomputed in the shell equals the one the service reports.
    digests = re.findall(r"\b[0-9a-f]{64}\b", output)
    assert digests and any(output.count(f'"eventsSha256":"{d}"') for d in digests)
