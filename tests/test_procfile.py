"""The Procfile as a Heroku-style host runs it: honcho, with PORT set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.servers import ROOT
from harness.servers import free_port
from harness.servers import http

pytestmark = pytest.mark.server
HONCHO = Path(sys.executable).with_name("honcho")


def test_procfile_serves_on_the_port_the_host_gives(tmp_path):
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "WEB_CONCURRENCY": "3"}
    env.pop("PORT", None)
    log = tmp_path / "honcho.log"
    with open(log, "wb") as output:
        # honcho sets PORT for the web process from -p, as a Heroku-style router does.
        honcho = subprocess.Popen([str(HONCHO), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT),
                                   "-p", str(port), "--no-colour", "web"],
                                  cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline, reply = time.monotonic() + 30, None
        while reply is None and time.monotonic() < deadline:
            try:
                reply = http("GET", f"http://127.0.0.1:{port}/runs/lookup?scenarioId=pricing-v1&seed=42", timeout=5)
            except OSError:
                assert honcho.poll() is None, log.read_text()
                time.sleep(0.1)
        assert reply is not None, log.read_text()
        assert reply.status == 200 and reply.json()["source"] == "new"
        assert http("GET", f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
    finally:
        honcho.send_signal(signal.SIGTERM)
        honcho.wait(timeout=30)
    output = log.read_text()
    assert f"Listening at: http://0.0.0.0:{port}" in output
    assert "WEB_CONCURRENCY=3 ignored" in output  # the in-memory default keeps one worker
