"""A remote engine's identity: what it last said of itself, described again from time to time.

An HTTP engine or an LLM server is deployed apart from the service, so what it is can change
while the service runs. Each process describes it at start-up and again every
``RUN_REGISTRY_ENGINE_DESCRIBE_S`` (in the background, on the first request after that time: a
lookup hit only reads what is known), so a redeployed engine starts new runs without a restart.
One that cannot be reached leaves the last description in place (cached runs are still found)
and makes the engine unavailable for new runs until a description succeeds again.
"""

from __future__ import annotations

import logging
import os
import time
from abc import abstractmethod
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import httpx

from app.engine.base import Engine
from app.engine.base import EngineError
from app.engine.base import EngineRun
from app.engine.base import EngineUnavailable
from app.engine.base import Identity
from app.engine.events import MAX_TRANSCRIPT_BYTES
from app.engine.wire import TooLarge
from app.engine.wire import Wire
from app.engine.wire import engine_message
from app.engine.wire import read_some
from app.engine.wire import wire_problem
from app.models import EncodedEvent
from app.serving.concurrency import native_lock
from app.serving.concurrency import spawn

log = logging.getLogger(__name__)
# How soon an engine that did not answer is asked again: by a request that would start a run,
# or in the background.
RETRY_S = 1.0


class Description:
    """The identity a remote engine last gave, kept current."""

    def __init__(self, describe: Callable[[], Identity], every_s: float, what: str) -> None:
        """Describe at once (a failure is kept, not raised: the service starts without its engine)."""
        self._describe = describe
        self._every_s = every_s
        self._what = what
        self._lock = native_lock()
        self._identity: Identity | None = None
        self._problem: str | None = None
        self._due = 0.0
        self._describing_in = 0  # the pid of the process describing in the background, if one is
        self._refresh()
        if self._problem is not None:
            log.warning("engine %s cannot be reached (%s): lookups that would start a run answer 503 until it can",
                        what, self._problem)

    def current(self) -> Identity:
        """The last description, cheaply; one that is due is renewed in the background.

        :raises EngineUnavailable: the engine has never been described.
        """
        identity = self._identity
        if time.monotonic() >= self._due:
            if identity is None and self._take_turn():
                self._refresh()  # nothing is known to serve meanwhile: ask now (one request asks, the rest wait not)
                identity = self._identity
            else:
                self._renew_in_background()
        if identity is None:
            raise EngineUnavailable(self._unreachable())
        return identity

    def ready(self, fresh: bool = False) -> Identity:
        """The description, described again now if the engine did not answer last time (or ``fresh``).

        :raises EngineUnavailable: it does not answer now either.
        """
        if fresh or (self._problem is not None and time.monotonic() >= self._due):
            self._refresh()
        if self._problem is not None or self._identity is None:
            raise EngineUnavailable(self._unreachable())
        return self.current()

    @property
    def answering(self) -> bool:
        """Whether the last description (or run) reached the engine."""
        return self._problem is None

    def trouble(self, problem: str) -> None:
        """A run could not reach the engine: the next run waits for a description that succeeds."""
        with self._lock:
            self._problem = problem
            self._due = time.monotonic()

    def _unreachable(self) -> str:
        return f"The engine {self._what} cannot be reached ({self._problem or 'not described yet'}); retry shortly"

    def _renew_in_background(self) -> None:
        if self._take_turn():
            spawn(self._refresh, name="describe")

    def _take_turn(self) -> bool:
        """Whether this caller describes the engine now (one at a time per process; a forked
        process, such as a work-horse, describes for itself)."""
        with self._lock:
            if self._describing_in == os.getpid():
                return False
            self._describing_in = os.getpid()
            return True

    def _refresh(self) -> None:
        try:
            identity = self._describe()
        except EngineUnavailable as err:
            with self._lock:
                self._problem = str(err)
                self._due = time.monotonic() + min(RETRY_S, self._every_s)
                self._describing_in = 0
            return
        with self._lock:
            previous = self._identity
            if previous is None or identity != previous:
                self._identity = identity  # a new object only when it changed: engineCodeHash is kept per object
            self._problem = None
            self._due = time.monotonic() + self._every_s
            self._describing_in = 0
        if previous is not None and identity != previous:
            log.warning("engine %s describes itself anew (%s %s, digest %s; was %s %s, digest %s):"
                        " new runs from now on", self._what, identity.name, identity.version, identity.digest,
                        previous.name, previous.version, previous.digest)


class RemoteEngine(Engine):
    """An engine deployed apart from the service and spoken to over HTTP (an HTTP engine, an LLM
    server): its identity is what it last described (``Description``), its connections are kept
    per engine thread (``Wire``). A kind says how it is described and how it runs."""

    remote = True

    def __init__(self, spec: str, base: str, token: str | None, describe_every_s: float,
                 read_timeout_s: float) -> None:
        """Described at once: what ``_describe`` needs must be set before this runs."""
        super().__init__(spec)
        self.base = base
        self.wire = Wire({"Authorization": f"Bearer {token}"} if token else {}, read_timeout_s)
        self.description = Description(self._describe, describe_every_s, spec)

    @abstractmethod
    def _describe(self) -> Identity:
        """Ask the engine what it is now. :raises EngineUnavailable: it does not answer as it should."""

    def identity(self) -> Identity:
        return self.description.current()

    def ready(self, fresh: bool = False) -> Identity:
        return self.description.ready(fresh)

    def close(self) -> None:
        self.wire.close()

    def available(self) -> bool:
        return self.description.answering


class RemoteRun(EngineRun):
    """One run as a streamed POST to a remote engine: its own connection (``cancel`` shuts it
    down), the answer's status checked, and whatever the wire does wrong said as the run's failure.
    A kind says what it posts (``path``, ``accept``, ``request``) and how the answer reads as
    events (``events``, which refuses a Content-Type it does not take)."""

    path: str
    accept: str

    def __init__(self, engine: RemoteEngine) -> None:
        self._engine = engine
        self._connection = engine.wire.for_run()
        self._stopped = False

    @abstractmethod
    def request(self) -> dict[str, Any]:
        """The JSON body of the run's POST."""

    @abstractmethod
    def events(self, response: httpx.Response, kind: str) -> Iterator[EncodedEvent]:
        """The answer's events; ``kind`` is its Content-Type, lower case, without parameters.

        :raises EngineError: the answer is not a run's events.
        """

    def __iter__(self) -> Iterator[EncodedEvent]:
        engine = self._engine
        try:
            with self._connection.client.stream("POST", f"{engine.base}{self.path}", json=self.request(),
                                                headers={"Accept": self.accept}) as response:
                if response.status_code != 200:
                    raise EngineError(f"POST {self.path} answered {response.status_code}:"
                                      f" {engine_message(read_some(response))}")
                yield from self.events(response, response.headers.get("content-type", "").partition(";")[0]
                                       .strip().lower())
        except TooLarge:
            raise EngineError(f"it sent more than {MAX_TRANSCRIPT_BYTES} bytes") from None
        except (httpx.HTTPError, OSError) as err:
            if self._stopped:
                raise EngineError("it was stopped") from None
            if isinstance(err, httpx.ConnectError):
                engine.description.trouble(wire_problem(err))
            raise EngineError(wire_problem(err)) from None

    def cancel(self) -> None:
        """Shut the connection down: the engine thread's read ends at once, and the engine sees
        its client gone."""
        self._stopped = True
        self._connection.cancel()

    def end(self) -> None:
        self._connection.end()
