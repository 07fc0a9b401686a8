"""``run-registry``, the installed console script: every online command against a real gunicorn
with keys on, and check-engine with a deterministic, a non-deterministic and a malformed engine;
a reader that closes the pipe early, and Ctrl-C, end every command quietly, by the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import zipfile

import pytest

from app.access import new_key
from harness.servers import GUNICORN
from harness.servers import Gunicorn
from harness.servers import http
from harness.servers import live_children

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
    assert cli("verify-pack", "pack.zip", "--public-key", "keys.json", key=None, cwd=tmp_path).returncode == 0
    assert cli("verify-pack", "pack.zip", "--key", "keys.json", key=None, cwd=tmp_path).returncode == 0  # its old name
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


def test_status_prints_a_runs_status_count_digest_and_determinism(server):
    headers = {"Authorization": f"Bearer {SECRET}"}
    run_id = cli("lookup", "steady", "10", "--url", server.url).stdout.strip()
    metadata = http("GET", f"{server.url}/runs/{run_id}", headers=headers).json()
    done = cli("status", run_id, "--url", server.url)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.splitlines() == [
        f"runId         {run_id}", "status        done", "scenarioId    steady", "seed          10",
        f"count         {metadata['count']}", f"eventsSha256  {metadata['eventsSha256']}",
        f"determinism   unchecked (0 checks, 0 divergences; reference {run_id})"]
    # 20 s of events, started without waiting for any: running when asked about
    started = http("GET", f"{server.url}/runs/lookup?scenarioId=paced-100-200&seed=1",
                   headers={**headers, "Prefer": "respond-async"}).json()
    running = cli("status", started["runId"], "--url", server.url)
    assert running.returncode == 0 and "status        running" in running.stdout.splitlines()
    assert "eventsSha256" not in running.stdout
    broken = http("GET", f"{server.url}/runs/lookup?scenarioId=breaks-status&seed=1",
                  headers={**headers, "Prefer": "respond-async"}).json()["runId"]
    # The JSON transcript waits for the run's end: a failed run's is 500.
    assert http("GET", f"{server.url}/runs/{broken}/events", headers={**headers, "Prefer": "wait=25"}).status == 500
    failed = cli("status", broken, "--url", server.url)
    assert failed.returncode == 1 and failed.stderr == ""
    lines = failed.stdout.splitlines()
    assert lines[1] == "status        failed" and lines[4] == "count         2"
    assert lines[-1].startswith("error         ENGINE_ERROR: The engine failed to run scenario breaks-status")
    one_line_failure(cli("status", "run_nope_1_1", "--url", server.url), "404 BAD_INPUT: Run run_nope_1_1 not found")


def test_signing_keys_prints_or_saves_what_verify_pack_takes_with_no_key(server, tmp_path):
    published = http("GET", f"{server.url}/signing-keys").body
    printed = cli("signing-keys", "--url", server.url, key=None)  # the service has keys; this needs none
    assert printed.returncode == 0 and printed.stdout == published.decode() + "\n"
    saved = cli("signing-keys", "-o", "keys.json", "--url", server.url, key=None, cwd=tmp_path)
    assert saved.returncode == 0 and (tmp_path / "keys.json").read_bytes() == published
    key_id = json.loads(published)["keys"][0]["keyId"]
    assert saved.stdout == (f"keys.json: the service's public keys, keyId {key_id} in use (check a pack:"
                            " run-registry verify-pack <pack.zip> --public-key keys.json)\n")
    one_line_failure(cli("signing-keys", "-o", "keys.json", "--url", server.url, cwd=tmp_path),
                     "keys.json: exists; not overwritten (--force replaces it)")
    run_id = cli("lookup", "steady", "12", "--url", server.url).stdout.strip()
    assert cli("snapshot", run_id, "-o", "pack.zip", "--url", server.url, cwd=tmp_path).returncode == 0
    checked = cli("verify-pack", "pack.zip", "--public-key", "keys.json", key=None, cwd=tmp_path)
    assert checked.returncode == 0 and checked.stdout.startswith(f"pack.zip: genuine, signed by keyId {key_id}")


def with_reader_gone(*args: str, keep: int = 0, cwd=None) -> tuple[int, str]:
    """The command, its standard output a pipe whose reader takes ``keep`` bytes (none: the reader
    has gone before the command starts) and closes it, as ``| head -c <keep>`` does; its status
    and standard error."""
    reader, writer = os.pipe()
    if not keep:
        os.close(reader)
    environment = {"PATH": os.environ["PATH"], "RUN_REGISTRY_KEY": SECRET}
    with subprocess.Popen([RUN_REGISTRY, *args], stdout=writer, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          env=environment) as process:
        os.close(writer)
        if keep:
            with open(reader, "rb") as output:
                output.read(keep)
        _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def evidence(server, tmp_path_factory):
    """A done run, its pack, the service's keys and an engine, in a directory of their own."""
    directory = tmp_path_factory.mktemp("evidence")
    run_id = cli("lookup", "steady", "11", "--url", server.url).stdout.strip()
    assert cli("snapshot", run_id, "-o", "pack.zip", "--url", server.url, cwd=directory).returncode == 0
    assert cli("signing-keys", "-o", "keys.json", "--url", server.url, cwd=directory).returncode == 0
    (directory / "teamengines.py").write_text(ENGINES)
    return run_id, directory


# Every command that prints, as (arguments, whether it asks the service).
PRINTING = {
    "lookup": (("lookup", "steady", "11"), True),
    "lookup-watch": (("lookup", "steady", "11", "--watch"), True),
    "status": (("status", "{run}"), True),
    "events": (("events", "{run}"), True),
    "verify": (("verify", "{run}"), True),
    "compare": (("compare", "steady", "11", "steady", "12"), True),
    "snapshot": (("snapshot", "{run}", "-o", "{tmp}/pack.zip"), True),
    "signing-keys": (("signing-keys",), True),
    "signing-keys-saved": (("signing-keys", "-o", "{tmp}/keys.json"), True),
    "verify-pack": (("verify-pack", "pack.zip", "--public-key", "keys.json"), False),
    "new-key": (("new-key", "ci", "read+run"), False),
    "new-signing-key": (("new-signing-key", "{tmp}/signing-key.pem"), False),
    "check-engine": (("check-engine", "teamengines:Steady"), False),
}


@pytest.mark.parametrize(("args", "online"), PRINTING.values(), ids=PRINTING.keys())
def test_a_reader_gone_before_the_first_line_ends_the_command_quietly_by_sigpipe(server, evidence, tmp_path, args,
                                                                                online):
    run_id, directory = evidence
    args = [arg.format(run=run_id, tmp=tmp_path) for arg in args] + (["--url", server.url] if online else [])
    assert with_reader_gone(*args, cwd=directory) == (-signal.SIGPIPE, "")


def test_a_reader_that_stops_early_ends_a_long_output_quietly_and_a_shell_says_141(server):
    run_id = cli("lookup", "paced-0-40000", "1", "--url", server.url).stdout.strip()
    transcript = http("GET", f"{server.url}/runs/{run_id}/events", headers={"Authorization": f"Bearer {SECRET}"})
    assert len(transcript.body) > 2 * 2**20  # more than any pipe holds: the reader closes while much is unwritten
    assert with_reader_gone("events", run_id, "--url", server.url, keep=60) == (-signal.SIGPIPE, "")
    # A new run of as many events, watched live: the reader closes within its runId.
    assert with_reader_gone("lookup", "paced-0-40000", "2", "--watch", "--url", server.url, keep=4) == (
        -signal.SIGPIPE, "")
    piped = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "$0" events {run_id} --url {server.url} | head -c 60 > /dev/null;'
                       ' echo "status $? ${PIPESTATUS[*]}"', RUN_REGISTRY],
        capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"], "RUN_REGISTRY_KEY": SECRET})
    assert (piped.stdout, piped.stderr) == ("status 141 141 0\n", "")


def test_ctrl_c_ends_a_watch_quietly_by_sigint_and_a_shell_says_130(server):
    environment = {"PATH": os.environ["PATH"], "RUN_REGISTRY_KEY": SECRET}
    watch = [RUN_REGISTRY, "lookup", "paced-100-200", "2", "--watch", "--url", server.url]  # 20 s of events
    with subprocess.Popen(watch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment) as run:
        run_id = run.stdout.readline()
        first = run.stdout.readline()  # the watch is under way
        run.send_signal(signal.SIGINT)
        rest, stderr = run.communicate(timeout=30)
    assert run_id.startswith("run_paced-100-200_2_") and first.startswith("1 start ")
    assert (run.returncode, stderr) == (-signal.SIGINT, "")
    # In a shell, which goes on (the signal was the child's alone) and says its status.
    script = f'"$0" {" ".join(watch[1:])}; echo "status $?"'
    with subprocess.Popen(["bash", "-c", script, RUN_REGISTRY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=environment) as shell:
        shell.stdout.readline()  # the runId: the command is under way
        (child,) = live_children(shell.pid)
        os.kill(child, signal.SIGINT)
        rest, stderr = shell.communicate(timeout=30)
    assert (rest.splitlines()[-1], stderr) == ("status 130", "")
