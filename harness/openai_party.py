"""An OpenAI-compatible server that plays a remote party's part in the tests: it answers as the
scenario's model says, well (with every call's volatile fields changed) or badly (refusals, a
stream cut short, errors in the stream). The real model behind the service's tests is llama.cpp
(harness/llm_rig.py); this one shows what no honest server does on demand.

    OpenAIParty(port).serve_in_background()   # models: see MODELS
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

# What each model does; its name is the scenario's "model".
MODELS = ("steady", "quirky-usage", "status429", "status500", "cut", "error-event", "error-chunk", "no-finish",
          "not-a-stream", "slow")
WORDS = ("The", " best", " price", " is", " $42", ".")


class OpenAIParty(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, api_key: str | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []  # each request's path, headers and body
        self._lock = threading.Lock()

    def serve_in_background(self) -> OpenAIParty:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def note(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: OpenAIParty
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.note({"path": self.path, "headers": dict(self.headers)})
        if self._refused():
            return
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": int(time.time()), "owned_by": "tests"} for name in MODELS]})
        else:
            self._json(404, {"error": {"message": "Unknown URL", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.server.note({"path": self.path, "headers": dict(self.headers), "body": body})
        if self._refused():
            return
        model = body.get("model")
        if model == "status429":
            self._json(429, {"error": {"message": "Rate limit reached for requests \x1b]0;owned\x07",
                                       "type": "requests", "code": "rate_limit_exceeded"}})
            return
        if model == "status500":
            self._json(500, {"error": {"message": "The server had an error while processing your request.",
                                       "type": "server_error"}})
            return
        if model == "not-a-stream":
            self._json(200, {"id": "x", "object": "chat.completion", "choices": []})
            return
        completion, created = f"chatcmpl-{secrets.token_hex(8)}", int(time.time() * 1000) + secrets.randbelow(1000)
        fingerprint = "fp_tests"

        def chunk(**fields: Any) -> bytes:
            padding = secrets.token_urlsafe(secrets.randbelow(12) + 1)
            padded = {"id": completion, "object": "chat.completion.chunk", "created": created, "model": model,
                      "system_fingerprint": fingerprint, "obfuscation": padding, **fields}
            return f"data: {json.dumps(padded)}\n\n".encode()

        usage = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
        pieces = [chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
        pieces += [chunk(choices=[{"index": 0, "delta": {"content": word}, "finish_reason": None}]) for word in WORDS]
        quirk = model == "quirky-usage" and secrets.randbelow(2)  # usage in the finishing chunk, or after it
        if quirk:
            pieces.append(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=usage))
        else:
            pieces.append(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
            pieces.append(chunk(choices=[], usage=usage))
        pieces.append(b"data: [DONE]\n\n")
        if model == "cut":
            pieces = pieces[:4]
        elif model == "error-event":
            pieces = [*pieces[:3], b'event: error\ndata: {"error": {"message": "Model overloaded"}}\n\n']
        elif model == "error-chunk":
            pieces = [*pieces[:3], b'data: {"error": {"message": "Context length exceeded", "code": 400}}\n\n']
        elif model == "no-finish":  # a clean end, but neither a finish_reason nor [DONE]: cut short
            pieces = pieces[:4]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            if model == "slow":
                time.sleep(0.05)
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
        if model == "cut":  # the connection ends without the chunked body's end
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _refused(self) -> bool:
        if self.server.api_key is None or self.headers.get("Authorization") == f"Bearer {self.server.api_key}":
            return False
        self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        return True

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
