"""A small HTTP engine that plays a remote party's part in the tests, well or badly, as the
scenarioId's first word says (``steady-1`` is steady, ``status500-x`` refuses, ``cut-x`` stops
mid-answer...). The example engine (examples/engines/http-engine.mjs) is the well-behaved one;
this one also misbehaves, and can be redeployed in place (``code_digest``).

    python -m harness.http_engine --port N     (or HttpEngineServer(...) in a test's own process)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

from harness.fakes import transcript


class HttpEngineServer(ThreadingHTTPServer):
    """The engine on ``127.0.0.1:port``; ``serve_in_background()`` for a test's own process."""

    daemon_threads = True

    def __init__(self, port: int, token: str | None = None, code_digest: str = "sha256:one") -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.token = token
        self.code_digest = code_digest
        self.runs = 0
        self.disconnected = threading.Event()  # a client went away mid-answer
        self.requests: list[dict[str, str]] = []

    def serve_in_background(self) -> HttpEngineServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: HttpEngineServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(dict(self.headers))
        if not self._authorized():
            return
        if self.path == "/describe":
            self._json(200, {"name": "http-fake", "version": "1", "codeDigest": self.server.code_digest})
        else:
            self._json(404, {"message": "no such route"})

    def do_POST(self) -> None:
        self.server.requests.append(dict(self.headers))
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        scenario_id, seed = body["scenarioId"], body["seed"]
        self.server.runs += 1
        behaviour = scenario_id.split("-")[0]
        events = transcript(scenario_id, seed)
        if behaviour == "status500":
            self._json(500, {"message": "the model crashed \x1b[31mhard\x1b[0m"})
        elif behaviour == "html":
            self._send(200, "text/html", b"<html>not events</html>")
        elif behaviour == "ndjson":
            self._stream("application/x-ndjson", [json.dumps(event).encode() + b"\n" for event in events])
        elif behaviour == "cut":  # two events, then the connection ends mid-answer (no last chunk)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in events[:2]:
                self._chunk(_sse(event))
            self.wfile.flush()
            self.close_connection = True
        elif behaviour == "garble":
            self._stream("text/event-stream", [_sse(events[0]), b"event: token\ndata: {not json\n\n"])
        elif behaviour == "error":
            self._stream("text/event-stream", [_sse(events[0]), b"event: error\ndata: {}\n\n"])
        elif behaviour == "slow":  # an event now and then, as a model thinks
            self._stream("text/event-stream", [_sse(event) for event in events], pause_s=0.05)
        elif behaviour == "hang":  # the first event, then nothing until the client goes away
            self._stream("text/event-stream", [_sse(events[0])], hang=True)
        else:
            self._stream("text/event-stream", [_sse(event) for event in events])

    def _authorized(self) -> bool:
        if self.server.token is None or self.headers.get("Authorization") == f"Bearer {self.server.token}":
            return True
        self._json(401, {"message": "a bearer token is required"})
        return False

    def _stream(self, content_type: str, pieces: list[bytes], pause_s: float = 0.0, hang: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in pieces:
                time.sleep(pause_s)
                self._chunk(piece)
            while hang:
                time.sleep(0.05)
                self._chunk(b": still thinking\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.server.disconnected.set()
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event['data'])}\n\n".encode()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token")
    arguments = parser.parse_args()
    server = HttpEngineServer(arguments.port, arguments.token)
    print(f"listening on http://127.0.0.1:{arguments.port}", flush=True)
    server.serve_forever()
