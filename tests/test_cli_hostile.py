"""run-registry against a service that misbehaves (a small server of the test's plays it): it
never sends its key to another origin, prints nothing a terminal would act on, writes a pack
whole or not at all and never over a file by surprise, and asks again about a running run after
Retry-After, until its deadline; a watch that has its run's end asks nothing more of a service
gone; Ctrl-C while it waits for an answer ends it quietly."""

from __future__ import annotations

import json
import os
import signal
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
        self.asked = threading.Event()  # a request has come
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization"), time.monotonic()))
        self.server.asked.set()
        answered = self.server.answer(self)
        if answered is None:  # gone: the connection closes with no answer
            return
        status, headers, body = answered
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # verify and compare: answered as any other request
        self.do_GET()

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


EVENT_STREAM = {"Content-Type": "text/event-stream; charset=utf-8"}


def test_a_watch_ends_at_its_runs_done_event_and_asks_nothing_of_a_service_gone_since(party):
    """The service stopped after the last event: the watch has the whole run, and exits 0."""
    def answer(handler):
        if handler.path.startswith("/runs/lookup"):
            return 202, {"Content-Type": "application/json"}, b'{"runId": "r", "source": "new", "status": "running"}'
        if sum(path == "/runs/r/events" for path, _, _ in handler.server.seen) > 1:
            return None
        stream = b"retry: 3000\n\nid: 1\nevent: start\ndata: {}\n\nid: 2\nevent: done\ndata: {}\n\n"
        return 200, EVENT_STREAM, stream

    service = party(answer)
    watched = cli("lookup", "a", "1", "--watch", "--url", service.url)
    assert (watched.returncode, watched.stdout, watched.stderr) == (0, "r\n1 start {}\n2 done {}\n", "")
    assert [path for path, _, _ in service.seen].count("/runs/r/events") == 1


def test_a_watch_of_a_done_run_ends_at_its_count_and_asks_nothing_more(party):
    """An engine's last event need not be done: a done run's count says where its stream ends."""
    def answer(handler):
        if handler.path.startswith("/runs/lookup"):
            return 200, {"Content-Type": "application/json"}, b'{"runId": "r", "source": "cache"}'
        if handler.path == "/runs/r":
            return 200, {"Content-Type": "application/json"}, b'{"runId": "r", "status": "done", "count": 2}'
        if sum(path == "/runs/r/events" for path, _, _ in handler.server.seen) > 1:
            return None
        return 200, EVENT_STREAM, b"id: 1\nevent: start\ndata: {}\n\nid: 2\nevent: report\ndata: {}\n\n"

    service = party(answer)
    watched = cli("lookup", "a", "1", "--watch", "--url", service.url)
    assert (watched.returncode, watched.stdout, watched.stderr) == (0, "r\n1 start {}\n2 report {}\n", "")
    assert [path for path, _, _ in service.seen].count("/runs/r/events") == 1


def test_a_watch_whose_stream_ends_short_of_the_runs_end_asks_again_and_says_so_when_it_cannot(party):
    def answer(handler):
        if handler.path.startswith("/runs/lookup"):
            return 202, {"Content-Type": "application/json"}, b'{"runId": "r", "source": "new", "status": "running"}'
        if sum(path == "/runs/r/events" for path, _, _ in handler.server.seen) > 1:
            return None
        return 200, EVENT_STREAM, b"id: 1\nevent: start\ndata: {}\n\n"

    service = party(answer)
    watched = cli("lookup", "a", "1", "--watch", "--url", service.url)
    assert watched.returncode == 1 and watched.stdout == "r\n1 start {}\n"
    assert watched.stderr.startswith(f"run-registry: lookup: cannot reach {service.url}: ")
    assert [path for path, _, _ in service.seen].count("/runs/r/events") == 2


WAITING = {
    "lookup": ("lookup", "a", "1"),
    "lookup-watch": ("lookup", "a", "1", "--watch"),
    "status": ("status", "r"),
    "events": ("events", "r"),
    "snapshot": ("snapshot", "r", "-o", "pack.zip"),
    "verify": ("verify", "r"),
    "compare": ("compare", "a", "1", "b", "2"),
    "signing-keys": ("signing-keys",),
}


@pytest.mark.parametrize("args", WAITING.values(), ids=WAITING.keys())
def test_ctrl_c_while_the_service_has_not_answered_ends_the_command_quietly_by_sigint(party, tmp_path, args):
    answered = threading.Event()

    def answer(handler):
        answered.wait(30)  # never, while the test runs: the command waits for it
        return None

    service = party(answer)
    command = [RUN_REGISTRY, *args, "--url", service.url]
    environment = {"PATH": os.environ["PATH"], "RUN_REGISTRY_KEY": SECRET}
    try:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env=environment) as waiting:
            assert service.asked.wait(30)
            waiting.send_signal(signal.SIGINT)
            stdout, stderr = waiting.communicate(timeout=30)
    finally:
        answered.set()
    assert (waiting.returncode, stdout, stderr) == (-signal.SIGINT, "", "")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_status_prints_each_field_on_a_line_of_its_own_and_nothing_a_terminal_acts_on(party):
    hostile = "\x1b[2J\x1b]0;owned\x07\u009b31m\u202eevil\nstatus        done"
    run = {"runId": "r", "status": "failed", "scenarioId": hostile, "seed": 1, "count": 3,
           "error": {"type": "ENGINE_ERROR", "message": hostile}}
    service = party(lambda handler: (200, {"Content-Type": "application/json"}, json.dumps(run).encode()))
    shown = cli("status", "r", "--url", service.url)
    assert shown.returncode == 1 and shown.stderr == ""
    assert not any(character in shown.stdout for character in "\x1b\x07\u009b\u202e"), repr(shown.stdout)
    lines = shown.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["runId", "status", "scenarioId", "seed", "count", "error"]
    assert lines[1] == "status        failed" and "\\u001b[2J" in lines[2] and "\\nstatus" in lines[2]


def test_signing_keys_sends_no_key_and_keeps_no_answer_that_holds_no_keys(party, tmp_path):
    from app.signing import SigningKey

    pem = SigningKey.generate().public.pem
    keys = {"keys": [{"keyId": "k", "algorithm": "ed25519", "publicKey": pem}], "note": "\x1b]0;owned\x07"}
    answers = iter([(200, {"Content-Type": "application/json"}, json.dumps(keys).encode()),
                    (200, {"Content-Type": "text/html"}, b"<html>a login page</html>"),
                    (200, {"Content-Type": "application/json"}, b'{"keys": []}')])
    service = party(lambda handler: next(answers))
    printed = cli("signing-keys", "--url", service.url)
    assert printed.returncode == 0 and "\x1b" not in printed.stdout and "\\u001b]0;owned\\u0007" in printed.stdout
    html = cli("signing-keys", "-o", "keys.json", "--url", service.url, cwd=tmp_path)
    assert html.returncode == 1
    assert "the answer is not the JSON of GET /signing-keys; nothing was written" in html.stderr
    empty = cli("signing-keys", "-o", "keys.json", "--url", service.url, cwd=tmp_path)
    assert empty.returncode == 1 and "holds no PEM public key" in empty.stderr and "nothing was written" in empty.stderr
    assert list(tmp_path.iterdir()) == []
    assert [authorization for _, authorization, _ in service.seen] == [None] * 3  # RUN_REGISTRY_KEY is set


def test_a_watch_prints_the_services_runid_and_failure_as_text_not_as_controls(party):
    def answer(handler):
        if handler.path.startswith("/runs/lookup"):
            body = {"runId": "r\x1b[2J", "source": "new", "status": "running"}
            return 202, {"Content-Type": "application/json"}, json.dumps(body).encode()
        failure = json.dumps({"type": "ENGINE_ERROR", "message": "\x1b]0;owned\x07 it broke"})
        return 200, EVENT_STREAM, f"id: end\nevent: error\ndata: {failure}\n\n".encode()

    watched = cli("lookup", "a", "1", "--watch", "--url", party(answer).url)
    assert watched.returncode == 1 and watched.stdout == "r\\u001b[2J\n"
    assert "\x1b" not in watched.stderr and "failed: \\u001b]0;owned\\u0007 it broke" in watched.stderr


@pytest.mark.parametrize("args", [("verify", "r"), ("status", "r"), ("lookup", "a", "1"),
                                  ("compare", "a", "1", "b", "2")], ids=["verify", "status", "lookup", "compare"])
def test_an_answer_that_is_not_json_is_one_line_not_a_traceback(party, args):
    service = party(lambda handler: (200, {"Content-Type": "text/html"}, b"<html>\x1b[2J a login page</html>"))
    done = cli(*args, "--url", service.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"run-registry: {args[0]}: the answer (200) is not JSON: <html>?[2J a login page</html>\n"
