"""``run-registry``, the installed console script: every online command against a real gunicorn
with keys on, and check-engine with a deterministic, a non-deterministic and a malformed engine."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile

import pytest

from app.access import new_key
from harness.servers import GUNICORN
from harness.servers import Gunicorn
from harness.servers import http

pytestmark = pytest.mark.server
RUN_REGISTRY = str(GUNICORN.with_name("run-registry"))
SECRET, ENTRY = new_key("cli", "read+run")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine", "RUN_REGISTRY_API_KEYS": ENTRY}
    with Gunicorn(tmp_path_factory.mktemp("cli") / "gunicorn.log", env=env) as running:
        yield running


def cli(*args: str, key: str | None = SECRET, cwd=None, env: dict[str, str] | None = None):
    """The command as a user types it; the key from RUN_REGISTRY_KEY unless a test gives --key."""
    environment = {"PATH": os.environ["PATH"], **({"RUN_REGISTRY_KEY": key} if key else {}), **(env or {})}
    return subprocess.run([RUN_REGISTRY, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=environment)


def one_line_failure(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode != 0 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr


def test_lookup_prints_the_runid_and_watch_streams_the_run_to_its_end(server):
    looked = cli("lookup", "steady", "7", "--url", server.url)
    assert looked.returncode == 0 and looked.stdout.startswith("run_steady_7_")
    run_id = looked.stdout.strip()
    assert cli("lookup", "steady", "7", "--url", server.url).stdout.strip() == run_id  # the same run
    watched = cli("lookup", "paced-30-6", "1", "--watch", "--url", server.url)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[0].startswith("run_paced-30-6_1_") and len(lines) == 1 + 9
    assert [line.split(" ", 2)[:2] for line in lines[1:]] == [
        ["1", "start"], *[[str(n), "token"] for n in range(2, 8)], ["8", "report"], ["9", "done"]]
    failed = cli("lookup", "paced-20-3-breaks", "1", "--watch", "--url", server.url)
    assert failed.returncode == 1 and failed.stdout.splitlines()[-1].split(" ", 2)[1] == "token"
    assert failed.stderr.count("\n") == 1 and "failed: The engine failed to run scenario" in failed.stderr


def test_events_snapshot_verify_and_compare(server, tmp_path):
    run_id = cli("lookup", "steady", "8", "--url", server.url).stdout.strip()
    events = cli("events", run_id, "--url", server.url)
    assert events.returncode == 0
    assert json.loads(events.stdout) == http("GET", f"{server.url}/runs/{run_id}/events",
                                             headers={"Authorization": f"Bearer {SECRET}"}).json()
    saved = cli("snapshot", run_id, "-o", "pack.zip", "--url", server.url, "--key", SECRET, key=None, cwd=tmp_path)
    assert saved.returncode == 0 and saved.stdout.startswith("pack.zip: ")
    assert "attestation.json" in zipfile.ZipFile(tmp_path / "pack.zip").namelist()
    keys = http("GET", f"{server.url}/signing-keys", headers={"Authorization": f"Bearer {SECRET}"}).body
    (tmp_path / "keys.json").write_bytes(keys)
    assert cli("verify-pack", "pack.zip", "--key", "keys.json", key=None, cwd=tmp_path).returncode == 0
    verified = cli("verify", run_id, "--url", server.url)
    assert verified.returncode == 0 and json.loads(verified.stdout)["reproducible"] is True
    compared = cli("compare", "steady", "8", "steady", "9", "--url", server.url)
    assert compared.returncode == 0
    body = json.loads(compared.stdout)
    assert body["left"]["runId"] == run_id and body["diff"]["identical"] is False


def test_every_failure_is_one_line_and_non_zero(server, tmp_path):
    one_line_failure(cli("lookup", "steady", "7", "--url", server.url, key=None), "401 UNAUTHORIZED")
    one_line_failure(cli("lookup", "steady", "x", "--url", server.url), "400 BAD_INPUT: seed must be a valid integer")
    one_line_failure(cli("events", "run_nope_1_1", "--url", server.url), "404 BAD_INPUT: Run run_nope_1_1 not found")
    one_line_failure(cli("events", "run_x_1_1", "--url", "http://127.0.0.1:1"), "cannot reach http://127.0.0.1:1")
    run_id = cli("lookup", "steady", "7", "--url", server.url).stdout.strip()
    one_line_failure(cli("snapshot", run_id, "-o", str(tmp_path / "no" / "dir.zip"), "--url", server.url),
                     "No such file or directory")
    one_line_failure(cli("nonsense"), "invalid choice")
    one_line_failure(cli("snapshot", run_id), "the following arguments are required: -o/--output")


ENGINES = '''
class Steady:
    name, version = "steady", "1"

    def run(self, scenario_id, seed):
        yield {"type": "start", "data": {"scenarioId": scenario_id, "seed": seed}}
        yield {"type": "done", "data": {}}


class SetOrder(Steady):
    """Iterates a set of strings: its order follows the process's hash seed."""
    name = "set-order"

    def run(self, scenario_id, seed):
        yield {"type": "token", "data": {"text": " ".join({"alpha", "beta", "gamma", "delta", "epsilon", "zeta"})}}


class Malformed(Steady):
    name = "malformed"

    def run(self, scenario_id, seed):
        yield {"type": "start", "data": {}}
        yield {"type": "token", "text": "no data"}
'''


def test_check_engine_passes_a_deterministic_engine_and_names_what_fails_in_the_others(tmp_path):
    (tmp_path / "teamengines.py").write_text(ENGINES)
    steady = cli("check-engine", "teamengines:Steady", key=None, cwd=tmp_path)
    assert steady.returncode == 0, steady.stderr
    lines = steady.stdout.splitlines()
    assert lines[0] == "teamengines:Steady: steady 1 (python engine), scenario check-engine seed 42"
    pids = {line.split("(pid ")[1].split(")")[0] for line in lines[1:3]}
    assert len(pids) == 2  # two processes of their own
    assert "deterministic: both executions' transcripts are byte-identical" in steady.stdout
    hash_line = lines[-1]
    assert hash_line.startswith("  engineCodeHash: ") and len(hash_line.split(": ")[1]) == 64
    one_line_failure(cli("check-engine", "teamengines:SetOrder", key=None, cwd=tmp_path),
                     "not deterministic: two executions of scenario check-engine seed 42 differ")
    one_line_failure(cli("check-engine", "teamengines:Malformed", key=None, cwd=tmp_path),
                     'the engine failed: event 2 is not one the service records: it is not an object of exactly'
                     ' "type" and "data"')
    one_line_failure(cli("check-engine", "teamengines:Nothing", key=None, cwd=tmp_path), "cannot be imported")
    (tmp_path / "teamengines.py").write_text(ENGINES.replace('"seed": seed', '"seed": seed, "edited": True'))
    edited = cli("check-engine", "teamengines:Steady", key=None, cwd=tmp_path)
    assert edited.returncode == 0 and edited.stdout.splitlines()[-1] != hash_line  # its code is its identity


def test_the_engine_guides_template_passes_check_engine_as_the_guide_shows(tmp_path):
    from harness.servers import ROOT

    guide = (ROOT / "docs" / "engines.md").read_text()
    (tmp_path / "myeng.py").write_text(guide.split("```python\n", 1)[1].split("```", 1)[0])
    checked = cli("check-engine", "myeng:Engine", key=None, env={"PYTHONPATH": str(tmp_path)})
    assert checked.returncode == 0, checked.stderr
    assert "my-engine 1.0.0" in checked.stdout and ": 9 events, eventsSha256 " in checked.stdout
