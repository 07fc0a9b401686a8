"""run-registry against a service that misbehaves (a small server of the test's plays it): it
never sends its key to another origin, prints nothing a terminal would act on, writes a pack
whole or not at all and never over a file by surprise, and asks again about a running run after
Retry-After, until its deadline."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import pytest

from harness.servers import GUNICORN
from harness.servers import free_port

pytestmark = pytest.mark.server
RUN_REGISTRY = str(GUNICORN.with_name("run-registry"))
SECRET = "cli-secret-b7e1"


class Party(ThreadingHTTPServer):
    """Answers every request with ``answer(handler)``: (status, headers, body); keeps what it was sent."""

    daemon_threads = True

    def __init__(self, answer) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.answer = answer
        self.seen: list[tuple[str, str | None, float]] = []  # path, Authorization, when
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization"), time.monotonic()))
        status, headers, body = self.server.answer(self)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def party():
    made = []

    def make(answer):
        made.append(Party(answer))
        return made[-1]

    yield make
    for server in made:
        server.shutdown()
        server.server_close()


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([RUN_REGISTRY, *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": os.environ["PATH"], "RUN_REGISTRY_KEY": SECRET})


def test_a_redirect_to_another_origin_is_not_followed_and_the_key_never_goes_there(party):
    elsewhere = party(lambda handler: (200, {"Content-Type": "application/json"}, b'{"events": []}'))
    # localhost, not 127.0.0.1: another host name is another origin, whatever it resolves to.
    service = party(lambda handler: (302, {"Location": f"http://localhost:{elsewhere.server_port}/steal"}, b""))
    done = cli("events", "run_a_1_1", "--url", service.url)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("run-registry: events: the service answered 302, a redirect to another origin"
                                  " (http://localhost); not followed, so that the key is not sent there")
    assert elsewhere.seen == [] and service.seen[0][1] == f"Bearer {SECRET}"


def test_a_redirect_within_the_service_is_followed_with_the_key(party):
    def answer(handler):
        if handler.path.startswith("/runs/old"):
            return 307, {"Location": "/runs/new/events"}, b""
        return 200, {"Content-Type": "application/json"}, b'{"runId": "new", "events": [], "count": 0}'

    service = party(answer)
    done = cli("events", "old", "--url", service.url)
    assert done.returncode == 0 and '"runId": "new"' in done.stdout
    assert [auth for _, auth, _ in service.seen] == [f"Bearer {SECRET}"] * 2


def test_nothing_a_server_sends_reaches_the_terminal_as_a_control(party):
    hostile = "\x1b[2J\x1b]0;owned\x07\x1b]8;;http://evil\x1b\\click\u009b31m\u202eevil"

    def answer(handler):
        if handler.path.startswith("/runs/bad"):
            body = json.dumps({"type": "BAD_INPUT", "message": hostile}, ensure_ascii=False)
            return 400, {"Content-Type": "application/json"}, body.encode()
        events = {"events": [{"type": "token", "data": {"text": "\u009b\u2028"}}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(events, ensure_ascii=False).encode()

    service = party(answer)
    refused = cli("events", "bad", "--url", service.url)
    printed = cli("events", "good", "--url", service.url)
    for text in (refused.stderr, printed.stdout):
        assert not any(character in text for character in "\x1b\x07\u009b\u202e\u2028"), repr(text)
    assert refused.returncode == 1 and "?[2J" in refused.stderr
    assert printed.returncode == 0 and "\\u009b\\u2028" in printed.stdout  # escaped, not lost


def test_a_snapshot_is_a_new_file_written_whole_and_nothing_else_is_written(party, tmp_path):
    pack = b"PK\x03\x04" + b"\0" * 100

    def answer(handler):
        if handler.path.startswith("/runs/html"):
            return 200, {"Content-Type": "text/html"}, b"<html>not a pack</html>"
        return 200, {"Content-Type": "application/zip"}, pack

    service = party(answer)
    target = tmp_path / "kept.txt"
    target.write_text("someone's file")
    link = tmp_path / "pack.zip"
    link.symlink_to(target)
    refused = cli("snapshot", "run", "-o", str(link), "--url", service.url)
    assert refused.returncode == 1 and "exists; not overwritten (--force replaces it)" in refused.stderr
    forced = cli("snapshot", "run", "-o", str(link), "--force", "--url", service.url)
    assert forced.returncode == 0 and target.read_text() == "someone's file"  # the link replaced, not followed
    assert not link.is_symlink() and link.read_bytes() == pack
    not_a_pack = cli("snapshot", "html", "-o", str(tmp_path / "new.zip"), "--url", service.url)
    assert not_a_pack.returncode == 1 and "is not a ZIP evidence pack; nothing was written" in not_a_pack.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.txt", "pack.zip"]  # no stray temporary


def test_a_run_still_running_is_asked_about_again_after_retry_after_until_the_deadline(party):
    service = party(lambda handler: (202, {"Content-Type": "application/json", "Retry-After": "1"},
                                     b'{"runId": "r", "status": "running", "count": 3}'))
    started = time.monotonic()
    done = cli("events", "r", "--url", service.url, "--wait", "2.5")
    assert done.returncode == 1 and "the run is still running after 2.5 s; ask again later" in done.stderr
    gaps = [later - earlier for (_, _, earlier), (_, _, later) in zip(service.seen, service.seen[1:], strict=False)]
    assert 2 <= len(service.seen) <= 4 and all(gap >= 0.9 for gap in gaps), gaps  # 18,500 in 10 s before
    assert time.monotonic() - started < 10
