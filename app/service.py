"""RunService: get-or-create runs, execute the engine once per key, serve the records."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager

from app.clock import now_ms
from app.code_hash import engine_code_hash
from app.config import Settings
from app.engine.base import Engine
from app.errors import EngineFailed
from app.errors import RunNotFound
from app.errors import Unavailable
from app.models import LiveRun
from app.models import RunKey
from app.models import RunRecord
from app.models import Source
from app.models import canonical_json
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.text import printable

log = logging.getLogger(__name__)
# An event type becomes an SSE "event:" line later: no spaces, no newlines.
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class RunService:
    """Get-or-create runs and serve their transcripts. Knows nothing about HTTP."""

    def __init__(self, registry: Registry, engine: Engine, settings: Settings) -> None:
        self._registry = registry
        self._engine = engine
        self.engine_code_hash = engine_code_hash(engine, settings)
        self._run_id_clock = _UniqueMillis()

    def lookup(self, scenario_id: str, seed: int) -> tuple[LiveRun, Source]:
        """Return the live run for the key, executing the engine once if there is none.

        :raises EngineFailed: the engine raised or returned malformed events; nothing is stored.
        """
        key = RunKey(scenario_id, seed, self.engine_code_hash)
        with _registry_errors():
            live = self._registry.touch(key.digest)
            if live is not None:
                return live, "cache"
            live, created = self._registry.create_once(key.digest, lambda: self._execute(key))
        return live, "new" if created else "cache"

    def run(self, run_id: str) -> LiveRun:
        """:raises RunNotFound: the run never existed, expired or was evicted."""
        with _registry_errors():
            live = self._registry.get(run_id)
        if live is None:
            raise RunNotFound(f"Run {printable(run_id)} not found")
        return live

    def _execute(self, key: RunKey) -> RunRecord:
        started = time.perf_counter()
        which = f"scenario {key.scenario_id} seed {key.seed}"
        try:
            events = list(self._engine.run(key.scenario_id, key.seed))
        except Exception as err:  # a plugin's failure of any kind is reported, never cached
            log.exception("engine %s failed for %s", self._engine.name, which)
            raise EngineFailed(f"The engine failed to run {which}") from err
        events_json = _validated_events_json(events)
        if events_json is None:
            log.error("engine %s returned malformed events for %s", self._engine.name, which)
            raise EngineFailed(f"The engine returned malformed events for {which}")
        created_at = self._run_id_clock.next()
        log.info("engine ran %s: %d events in %.1f ms", which, len(events), (time.perf_counter() - started) * 1000)
        return RunRecord(
            run_id=f"run_{key.scenario_id}_{key.seed}_{created_at}",
            cache_key=key.digest,
            scenario_id=key.scenario_id,
            seed=key.seed,
            engine_code_hash=key.engine_code_hash,
            engine_name=self._engine.name,
            engine_version=self._engine.version,
            created_at=created_at,
            event_count=len(events),
            events_sha256=hashlib.sha256(events_json).hexdigest(),
            events_json=events_json,
        )


class _UniqueMillis:
    """Epoch milliseconds that never repeat in this process, so two live runs never share a runId."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(now_ms(), self._last + 1)
            return self._last


@contextmanager
def _registry_errors() -> Iterator[None]:
    """Turn a backend outage into the API's 503."""
    try:
        yield
    except RegistryUnavailable as err:
        raise Unavailable("The run registry is unavailable; try again shortly") from err


def _validated_events_json(events: Sequence[object]) -> bytes | None:
    """Canonical JSON of well-formed events: each exactly {"type": name, "data": object}."""
    for event in events:
        if not (
            isinstance(event, dict)
            and event.keys() == {"type", "data"}
            and isinstance(event["type"], str)
            and _EVENT_TYPE.fullmatch(event["type"])
            and isinstance(event["data"], dict)
        ):
            return None
    try:
        return canonical_json(events)
    except (TypeError, ValueError):
        return None
