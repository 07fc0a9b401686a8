"""A client of a running service, for ``run-registry``'s online commands: the HTTP API, nothing else.

The standard library's urllib: the commands make a request or two each, and a client library
would be one more dependency to install for them.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode

DEFAULT_URL = "http://127.0.0.1:3001"
# Each read waits on the service at most this long (it answers 202 past its own wait, at most 25 s).
TIMEOUT_S = 40.0


class ServiceError(Exception):
    """The service refused, failed or could not be reached; the message is one line."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class StreamedEvent:
    id: str
    type: str
    data: str


class Service:
    """The service at ``url``, asked with ``key`` (``Authorization: Bearer``) when given."""

    def __init__(self, url: str, key: str | None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def lookup(self, scenario_id: str, seed: str, wait: bool = True) -> Answer:
        query = urlencode({"scenarioId": scenario_id, "seed": seed})
        return self.ask("GET", f"/runs/lookup?{query}", headers={} if wait else {"Prefer": "respond-async"})

    def done(self, path: str) -> Answer:
        """A done run's representation: asked again (each waiting up to 25 s) while the run runs."""
        while True:
            answer = self.ask("GET", path, headers={"Prefer": "wait=25"})
            if answer.status != 202:
                return answer

    def ask(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> Answer:
        """One request; an error status is a ServiceError with the service's own message."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            **self._headers, **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            raise ServiceError(_refusal(error.code, error.read())) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServiceError(f"cannot reach {self.url}: {reason}") from None

    def events(self, run_id: str) -> Iterator[StreamedEvent]:
        """The run's events as Server-Sent Events, live while it runs; resumed where it was when the
        connection drops, until the run ends (a 204 after its end, or its error message)."""
        last = ""
        while True:
            headers = {**self._headers, "Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            request = urllib.request.Request(f"{self.url}/runs/{quote(run_id)}/events", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                    if response.status == 204:
                        return
                    for event in _messages(response):
                        last = event.id or last
                        yield event
                        if event.type == "error":  # the run failed: its stream's last message
                            return
            except urllib.error.HTTPError as error:
                raise ServiceError(_refusal(error.code, error.read())) from None
            except (urllib.error.URLError, OSError) as error:
                raise ServiceError(f"cannot reach {self.url}: {getattr(error, 'reason', error)}") from None


def _messages(response: Any) -> Iterator[StreamedEvent]:
    """Server-Sent Events messages (id, event, data), comments and retry: left out."""
    fields: dict[str, str] = {}
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield StreamedEvent(fields.get("id", ""), fields.get("event", "message"), fields["data"])
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value.removeprefix(" ")


def _refusal(status: int, body: bytes) -> str:
    try:
        error = json.loads(body)
        return f"{status} {error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {body[:200].decode('utf-8', 'replace')}"
