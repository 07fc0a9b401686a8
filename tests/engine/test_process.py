"""Process engines in this process (the app's engine threads are plain threads here; gunicorn's
gevent worker, the RQ worker and check-engine are in tests/test_process_engines.py): every way
an engine goes wrong says why, and leaves nothing running."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from app import create_app
from app.config import ConfigError
from app.config import load_settings
from app.engine import load_engine
from app.engine.identity import CodeHash
from harness.servers import ROOT
from harness.servers import group_members
from harness.servers import running_processes
from harness.servers import wait_until

PYTHON = os.path.realpath(sys.executable)


@pytest.fixture
def hostile(tmp_path):
    """The hostile engine copied into this test's directory, so its processes are found by that path."""
    shutil.copy(ROOT / "harness" / "engines" / "hostile.py", tmp_path / "engine.py")
    return tmp_path / "engine.py"


def environment(engine: str, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "ENGINE_CODE_HASH": "pinned",
            "RUN_REGISTRY_NEW_RUNS_PER_MINUTE": "0", "RUN_REGISTRY_ENGINE": engine, **extra}


def client_of(script, behaviour: str, **extra: str):
    settings = load_settings(environment(f"command:{PYTHON} -I -S {script} {behaviour}", **extra))
    return create_app(settings).test_client()


def lookup(client, seed: int = 1, scenario: str = "a"):
    return client.get(f"/runs/lookup?scenarioId={scenario}&seed={seed}")


def test_a_process_engine_runs_once_per_key_and_its_events_are_the_transcript(hostile):
    client = client_of(hostile, "steady")
    first = lookup(client, 7)
    assert first.status_code == 200 and first.get_json()["source"] == "new"
    assert lookup(client, 7).get_json() == {**first.get_json(), "source": "cache"}
    events = client.get(f"/runs/{first.get_json()['runId']}/events").get_json()["events"]
    assert [event["type"] for event in events] == ["start", "token", "token", "token", "report", "done"]
    assert events[0]["data"] == {"scenarioId": "a", "seed": 7}
    verified = client.post(f"/runs/{first.get_json()['runId']}/verify").get_json()
    assert verified["reproducible"] is True
    assert client.get("/readyz").get_json()["engine"] == {"kind": "process", "name": "hostile-steady", "version": "1"}
    assert running_processes(str(hostile)) == []


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("crash", "it exited with status 3; its last line on standard error: ValueError: the model blew up ?[2J"),
     ("signal", "it was killed by SIGKILL"),
     ("garble", "line 3 of its output is not an event: it is not JSON (Expecting value: line 1 column 1 (char 0))"),
     ("error-event", "line 2 of its output is not an event: its type is error, which is the service's own"
                     " (the end of a failed run)"),
     ("nothing", "it wrote no events; its last line on standard error: nothing to say"),
     ("huge", "it wrote more than 33554432 bytes to standard output")],
    ids=["non-zero-exit", "signal", "malformed-line", "error-typed-event", "no-events", "over-32-MiB"],
)
def test_a_failing_engine_fails_its_run_saying_why_and_leaves_nothing_running(hostile, behaviour, reason):
    client = client_of(hostile, behaviour)
    failed = lookup(client)
    assert failed.status_code == 500
    assert failed.get_json() == {"type": "ENGINE_ERROR",
                                 "message": f"The engine failed to run scenario a seed 1: {reason}"}
    again = client.get("/runs/lookup?scenarioId=a&seed=1", headers={"Prefer": "respond-async"})
    assert again.status_code == 202  # a failed key is tried again: nothing of the failure was cached
    wait_until(lambda: running_processes(str(hostile)) == [])
    assert client.get("/healthz").status_code == 200


def test_a_hung_engine_and_the_child_it_started_are_stopped_at_the_timeout(hostile, caplog):
    caplog.set_level(logging.INFO)
    client = client_of(hostile, "hang", RUN_REGISTRY_ENGINE_TIMEOUT_S="1")
    started = time.monotonic()
    failed = lookup(client)
    assert failed.status_code == 500 and time.monotonic() - started < 5
    message = failed.get_json()["message"]
    assert message.startswith("The engine did not finish scenario a seed 1 within 1 s; its last line on standard"
                              " error: waiting for ever; my child is ")
    child = int(message.rsplit(" ", 1)[1])  # the engine's own child, in the engine's process group
    wait_until(lambda: running_processes(str(hostile)) == [] and not _alive(child), timeout=10)
    stderr_lines = [record for record in caplog.records if record.getMessage().startswith("engine stderr")]
    assert stderr_lines and all(record.runId.startswith("run_a_1_") for record in stderr_lines)


def test_a_run_that_leaves_a_child_behind_is_done_and_the_child_is_stopped(hostile):
    client = client_of(hostile, "leaves-a-child")
    run_id = lookup(client).get_json()["runId"]
    child = client.get(f"/runs/{run_id}/events").get_json()["events"][-2]["data"]["leftBehind"]
    wait_until(lambda: not _alive(child))


def test_stderr_is_logged_with_the_run_id_and_bounded_per_run(hostile, caplog):
    caplog.set_level(logging.INFO)
    client = client_of(hostile, "flood")
    run_id = lookup(client).get_json()["runId"]
    lines = [record for record in caplog.records if record.getMessage().startswith("engine stderr")]
    assert len(lines) == 101 and all(record.runId == run_id for record in lines)
    assert lines[-1].getMessage() == "engine stderr: ... and 4900 more lines on standard error, not logged"


def test_the_engine_sees_no_secret_of_the_service(hostile, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from app.access import new_key

    secret, entry = new_key("ci", "read+run")
    signing_key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    settings = load_settings(environment(
        f"command:{PYTHON} -I -S {hostile} environment", LANG="C.UTF-8", RUN_REGISTRY_API_KEYS=entry,
        RUN_REGISTRY_SIGNING_KEY=signing_key, RUN_REGISTRY_URL="memory://",
        REDIS_URL="redis://:hunter2@127.0.0.1:1/0", DATABASE_PASSWORD="hunter2", AWS_SECRET_ACCESS_KEY="hunter2",
        ENGINE_FLAVOUR="vanilla", RUN_REGISTRY_ENGINE_ENV="ENGINE_FLAVOUR", RUN_REGISTRY_ENGINE_TOKEN="hunter2",
    ))
    client = create_app(settings).test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    run_id = client.get("/runs/lookup?scenarioId=a&seed=1", headers=headers).get_json()["runId"]
    report = client.get(f"/runs/{run_id}/events", headers=headers).get_json()["events"][1]["data"]["environment"]
    assert sorted(report) == ["ENGINE_FLAVOUR", "HOME", "LANG", "PATH"]
    assert report["ENGINE_FLAVOUR"] == "vanilla"
    shown = json.dumps(report)
    assert not any(secret_part in shown for secret_part in ("hunter2", secret, entry.split(":")[1], "PRIVATE KEY"))


@pytest.mark.parametrize("name", ["RUN_REGISTRY_SIGNING_KEY", "RUN_REGISTRY_API_KEYS", "REDIS_URL", "RUN_REGISTRY_URL"])
def test_the_engine_environment_may_not_name_the_services_own_variables(name):
    with pytest.raises(ConfigError, match=f"RUN_REGISTRY_ENGINE_ENV may not name {name}"):
        load_settings({"RUN_REGISTRY_ENGINE_ENV": f"HOME,{name}"})


@pytest.mark.parametrize(
    ("command", "words"),
    [("no-such-engine-binary run", "'no-such-engine-binary' is not an executable file on PATH"),
     ("./missing/engine", "'./missing/engine' is not an executable file"),
     (f"{PYTHON} -I -S {{hostile}} describe-fails", "describe: it exited with status 4; its last line on standard"
                                                    " error: no describing today"),
     (f"{PYTHON} -I -S {{hostile}} describe-garbles", 'describe: its answer is not one line of JSON {"name",'
                                                      ' "version"}'),
     ("'unclosed", "is not a command line: No closing quotation")],
    ids=["not-on-path", "no-such-file", "describe-fails", "describe-garbles", "unclosed-quote"],
)
def test_an_engine_that_cannot_be_run_or_described_stops_the_start_with_one_line(hostile, command, words):
    settings = load_settings(environment("command:" + command.format(hostile=hostile)))
    with pytest.raises(ConfigError) as refused:
        load_engine(settings)
    assert words in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).startswith("RUN_REGISTRY_ENGINE command:")


def test_identity_is_the_content_the_script_a_file_beside_it_and_the_interpreter(tmp_path):
    bin_directory, engine_directory = tmp_path / "bin", tmp_path / "engine"
    bin_directory.mkdir()
    engine_directory.mkdir()
    interpreter = bin_directory / "interp"
    interpreter.write_text(f"#!/bin/sh\nexec {PYTHON} -I -S \"$@\"\n")
    interpreter.chmod(0o755)
    shutil.copy(ROOT / "harness" / "engines" / "hostile.py", engine_directory / "engine.py")
    (engine_directory / "prices.csv").write_text("price\n10\n")
    env = environment(f"command:interp {engine_directory}/engine.py steady",
                      PATH=f"{bin_directory}:{os.environ['PATH']}", ENGINE_CODE_HASH="", ENGINE_COMMIT_SHA="deploy")

    def code_hash() -> str:
        settings = load_settings(env)
        return CodeHash(settings).of(load_engine(settings).identity())

    first = code_hash()
    assert code_hash() == first  # the same content: the same hash
    (engine_directory / ".git").mkdir()
    (engine_directory / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert code_hash() == first  # version control's own files are not the engine
    changes = []
    for change in (lambda: (engine_directory / "prices.csv").write_text("price\n11\n"),
                   lambda: (engine_directory / "engine.py").write_text(
                       (engine_directory / "engine.py").read_text() + "\n# edited\n"),
                   lambda: interpreter.write_text(interpreter.read_text() + "# upgraded\n")):
        change()
        changes.append(code_hash())
    assert len({first, *changes}) == 4  # a data file, the script, the interpreter: each a new engine
    env["RUN_REGISTRY_ENGINE_ROOT"] = str(bin_directory)
    assert code_hash() not in {first, *changes}  # the root says what is the engine's


def test_an_engine_process_outlives_no_owner_killed_by_sigkill(hostile, tmp_path):
    """The warden: a process that started a hung engine is killed; the engine's group is stopped."""
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from app.engine.process import ProcessEngine
        engine = ProcessEngine("command:{PYTHON} -I -S {hostile} hang", {{"PATH": "/usr/bin:/bin"}})
        run = engine.run("a", 1)
        for event in run:
            print(event[1].decode(), flush=True)
    """)], stdout=subprocess.PIPE, text=True)
    start = json.loads(owner.stdout.readline())
    engine_group = os.getpgid(start["child"])
    assert len(group_members(engine_group)) == 2  # the engine and its child
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    wait_until(lambda: group_members(engine_group) == [], timeout=10)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, awaiting a parent's reaping, runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
