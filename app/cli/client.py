"""A client of a running service, for ``run-registry``'s online commands: the HTTP API, nothing else.

The standard library's urllib: the commands make a request or two each, and a client library
would be one more dependency to install for them. What urllib does not: its redirects would carry
the key (``Authorization``) to whatever host a ``3xx`` names (a redirect to another origin is
refused here, as curl and requests drop the key), it reads any body whole (bodies are bounded
here), and a ``202`` is asked again after its ``Retry-After``, until a deadline.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from urllib.parse import urlencode
from urllib.parse import urlsplit

from app.text import printable

DEFAULT_URL = "http://127.0.0.1:3001"
# Each read waits on the service at most this long (it answers 202 past its own wait, at most 25 s).
TIMEOUT_S = 40.0
# The largest body read: a transcript is at most 32 MiB of events, its pack and CSV a few times that.
MAX_BODY_BYTES = 256 * 2**20
# How long a command asks again about a run that is not done (a 202), Retry-After apart.
PENDING_DEADLINE_S = 600.0


class ServiceError(Exception):
    """The service refused, failed or could not be reached; the message is one line."""


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON: a server's body that is not is a ServiceError, said in one line like any other."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            shown = printable(self.body[:80].decode("utf-8", "replace"), 80)
            raise ServiceError(f"the answer ({self.status}) is not JSON: {shown}") from None

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, as every answer of the API is; anything else is a ServiceError."""
        body = self.json()
        if not isinstance(body, dict):
            raise ServiceError(f"the answer ({self.status}) is not a JSON object")
        return body


@dataclass(frozen=True)
class StreamedEvent:
    id: str
    type: str
    data: str


class Service:
    """The service at ``url``, asked with ``key`` (``Authorization: Bearer``) when given."""

    def __init__(self, url: str, key: str | None, pending_deadline_s: float = PENDING_DEADLINE_S) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._opener = urllib.request.build_opener(_SameOriginRedirects())
        self._pending_deadline_s = pending_deadline_s

    def lookup(self, scenario_id: str, seed: str, wait: bool = True) -> Answer:
        query = urlencode({"scenarioId": scenario_id, "seed": seed})
        return self.ask("GET", f"/runs/lookup?{query}", headers={} if wait else {"Prefer": "respond-async"})

    def done(self, path: str) -> Answer:
        """A done run's representation: asked again (each waiting up to 25 s, then its Retry-After
        apart) while the run runs, until the deadline."""
        deadline = time.monotonic() + self._pending_deadline_s
        while True:
            answer = self.ask("GET", path, headers={"Prefer": "wait=25"})
            if answer.status != 202:
                return answer
            if time.monotonic() >= deadline:
                raise ServiceError(f"the run is still running after {self._pending_deadline_s:g} s; ask again later")
            time.sleep(_retry_after(answer.headers))

    def ask(self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None) -> Answer:
        """One request; an error status is a ServiceError with the service's own message."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            **self._headers, **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
        try:
            with self._opener.open(request, timeout=TIMEOUT_S) as response:
                return Answer(response.status, dict(response.headers), _read_bounded(response))
        except urllib.error.HTTPError as error:
            raise ServiceError(_refusal(error.code, error.read(MAX_ERROR_BYTES))) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ServiceError(f"cannot reach {self.url}: {printable(str(reason))}") from None

    def events(self, run_id: str, count: int | None = None) -> Iterator[StreamedEvent]:
        """The run's events as Server-Sent Events, live while it runs; resumed where it was when the
        connection drops, until the run's end.

        The end is what the stream itself shows, so that a service gone after the last event is no
        failure: the run's error message; its ``done`` event (the connection is then read to its
        close, never resumed: a drop after ``done`` loses nothing of the run); position ``count``,
        when the caller knows the run is done and how long it is; or, resumed, a ``204``.
        """
        last = ""
        done_seen = False
        while True:
            headers = {**self._headers, "Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
            request = urllib.request.Request(f"{self.url}/runs/{quote(run_id)}/events", headers=headers)
            try:
                with self._opener.open(request, timeout=TIMEOUT_S) as response:
                    if response.status == 204:
                        return
                    for event in _messages(response):
                        last = event.id or last
                        yield event
                        if event.type == "error":  # the run failed: its stream's last message
                            return
                        if count is not None and event.id == str(count):
                            return
                        done_seen = done_seen or event.type == "done"
            except urllib.error.HTTPError as error:
                raise ServiceError(_refusal(error.code, error.read(MAX_ERROR_BYTES))) from None
            except (urllib.error.URLError, OSError) as error:
                if done_seen:
                    return
                reason = printable(str(getattr(error, "reason", error)))
                raise ServiceError(f"cannot reach {self.url}: {reason}") from None
            if done_seen:
                return


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


MAX_ERROR_BYTES = 64 * 1024


def _refusal(status: int, body: bytes) -> str:
    """The service's error, in one printable line (a server's text may hold terminal escapes)."""
    try:
        error = json.loads(body)
        return f"{status} {printable(str(error['type']), 40)}: {printable(str(error['message']))}"
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"{status}: {printable(body[:200].decode('utf-8', 'replace'))}"


def _read_bounded(response: Any) -> bytes:
    body: bytes = response.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise ServiceError(f"the answer is larger than {MAX_BODY_BYTES} bytes, more than any run's")
    return body


def _retry_after(headers: dict[str, str]) -> float:
    """Retry-After's seconds, within 1 to 30 (a server's word is a hint, not a command to wait an hour)."""
    try:
        seconds = float(headers.get("Retry-After", "2"))
    except ValueError:
        seconds = 2.0
    return min(max(seconds, 1.0), 30.0)


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def url_problem(url: str) -> str | None:
    """What keeps ``url`` from being a service's address (http or https, and a host), said with an
    example of one; ``None`` when it is one."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        where = url.split("://", 1)[1] if "://" in url else url.lstrip("/")
        example = f"http://{where}" if where else DEFAULT_URL
        if "://" in url:
            return f"is not http or https: a service's URL is such as {example}"
        return f"has no scheme: a service's URL starts with http:// or https://, such as {example}"
    if not parts.hostname:
        return f"names no host: a service's URL is such as {DEFAULT_URL}"
    try:
        parts.port  # noqa: B018 - a port that is not a number 0-65535 raises here
    except ValueError:
        return f"has a port that is not a number 0-65535: a service's URL is such as {DEFAULT_URL}"
    return None


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within the service's origin (or from http to https on the same host):
    urllib's own would send the key to whatever host a 3xx names."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        here, there = origin(req.full_url), origin(newurl)
        upgrade = here[0] == "http" and there[0] == "https" and here[1] == there[1] and there[2] in (None, 443)
        if there != here and not upgrade:
            raise ServiceError(f"the service answered {code}, a redirect to another origin"
                               f" ({printable(there[0], 10)}://{printable(there[1], 100)}); not followed, so that"
                               " the key is not sent there")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
