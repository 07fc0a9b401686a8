"""A mixed load against a running service, which checks every answer as it goes."""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass
from dataclasses import field

from harness.servers import http

ACTIONS = (("hot lookup", 40), ("new lookup", 10), ("events", 20), ("sse", 10), ("snapshot", 8), ("metadata", 12))


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    connection_errors: int = 0
    inconsistencies: list[str] = field(default_factory=list)
    run_ids_by_key: dict[str, set[str]] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


class MixedLoad:
    """Threads that look up hot and new keys, and read events (JSON and SSE), snapshots and
    metadata of the runs they were given; each answer is checked against the contract:

    - a runId answered for a key is that key's (``run_<scenarioId>_<seed>_...``), and its
      transcript starts with that scenario and seed: never another run's;
    - a hot key keeps its runId while it lives (the TTL is long and the cap holds the hot
      keys, so a second runId for one is a broken promise).
    """

    def __init__(self, url: str, threads: int = 8, hot_keys: int = 10, seed: int = 7,
                 tolerate_unavailable: bool = False) -> None:
        self.url = url
        self.threads = threads
        self.hot_keys = [f"hot-{index}" for index in range(hot_keys)]
        self.seed = seed
        self.tolerate_unavailable = tolerate_unavailable  # while a fault is injected, 503s are the answer
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._known: list[str] = []
        self._stop = threading.Event()

    def run_for(self, seconds: float) -> LoadResult:
        workers = [threading.Thread(target=self._work, args=(index,), daemon=True) for index in range(self.threads)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        self._stop.wait(seconds)
        self._stop.set()
        for worker in workers:
            worker.join(timeout=60)
        self.result.seconds = time.monotonic() - started
        return self.result

    def stop(self) -> None:
        self._stop.set()

    def _work(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        names, weights = zip(*ACTIONS, strict=True)
        fresh = 0
        while not self._stop.is_set():
            action = rng.choices(names, weights)[0]
            try:
                if action == "hot lookup":
                    self._lookup(rng.choice(self.hot_keys), rng.randrange(3), hot=True)
                elif action == "new lookup":
                    fresh += 1
                    self._lookup(f"new-{index}", self.seed * 10_000_000 + fresh, hot=False)
                elif self._known:
                    self._read(action, rng.choice(self._known))
            except (OSError, urllib.error.URLError, ConnectionError):
                with self._lock:
                    self.result.connection_errors += 1

    def _note(self, status: int) -> bool:
        with self._lock:
            self.result.requests += 1
            self.result.statuses[status] += 1
        return status == 200

    def _lookup(self, scenario: str, seed: int, hot: bool) -> None:
        reply = http("GET", f"{self.url}/runs/lookup?scenarioId={scenario}&seed={seed}", timeout=30)
        if not self._note(reply.status):
            self._check_error(reply)
            return
        run_id = reply.json()["runId"]
        if not run_id.startswith(f"run_{scenario}_{seed}_"):
            self._inconsistent(f"{scenario}/{seed} answered {run_id}")
        with self._lock:
            if hot:
                self.result.run_ids_by_key.setdefault(f"{scenario}/{seed}", set()).add(run_id)
            self._known.append(run_id)
            del self._known[:-200]

    def _read(self, action: str, run_id: str) -> None:
        path = {"events": "/events", "sse": "/events", "snapshot": "/snapshot", "metadata": ""}[action]
        headers = {"Accept": "text/event-stream"} if action == "sse" else {}
        reply = http("GET", f"{self.url}/runs/{run_id}{path}", headers=headers, timeout=30)
        if not self._note(reply.status):
            self._check_error(reply)
            return
        scenario, seed = run_id[4:].rsplit("_", 2)[:2]
        if action == "events":
            start = reply.json()["events"][0]["data"]
        elif action == "sse":
            start = json.loads(reply.body.split(b"\ndata: ", 1)[1].split(b"\n", 1)[0])
        elif action == "metadata":
            start = reply.json()
        else:
            start = {"scenarioId": scenario, "seed": int(seed)} if reply.body[:2] == b"PK" else {}
        if (start.get("scenarioId"), str(start.get("seed"))) != (scenario, seed):
            self._inconsistent(f"{action} of {run_id} is another run's: {start}")

    def _check_error(self, reply) -> None:
        body = reply.json()
        if set(body) != {"type", "message"}:
            self._inconsistent(f"error body {body}")
        # A run evicted or expired between being answered and being read is a 404, as promised.
        allowed = {404} | ({503} if self.tolerate_unavailable else set())
        if reply.status not in allowed:
            self._inconsistent(f"unexpected {reply.status}: {body}")

    def _inconsistent(self, what: str) -> None:
        with self._lock:
            self.result.inconsistencies.append(what)
