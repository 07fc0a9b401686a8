"""The reliability scenarios, each sized by its arguments: short in `make test`, long in `make soak`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from app.access import open_caller
from app.config import Settings
from app.errors import RunNotFound
from app.errors import Unavailable
from app.evidence.transcripts import TranscriptCache
from app.registry.memory import MemoryRegistry
from app.runs.service import RunService
from harness.fakes import FakeEngine
from harness.load import MixedLoad
from harness.servers import ROOT
from harness.servers import Gunicorn
from harness.servers import http

SOAK = open_caller("soak")  # every scope: the service without keys
WAIT_S = 10.0  # what lookups and reads wait for a run here; the engines are fast


@dataclass
class Outcome:
    """What a scenario held and what it found; ``errors`` must be empty."""

    name: str
    held: str
    errors: list[str]
    lost: int = 0


def mixed_load(directory: Path, seconds: float, max_entries: int = 150, env: dict[str, str] | None = None) -> Outcome:
    """The mixed load on a real gunicorn; RSS sampled once the registry and the process' caches are full.

    The transcript cache is bounded by bytes (32 MiB by default), and a load of new runs fills it
    over about 20 s: RSS grows that long, by design. Here it holds 1 MiB, full within the first
    second, so that RSS growth in the second half is growth beyond every bound: a leak.
    """
    settings = {"RUN_REGISTRY_MAX_ENTRIES": str(max_entries), "RUN_REGISTRY_ACCESS_LOG": "off",
                "RUN_REGISTRY_TRANSCRIPT_CACHE_MB": "1", **(env or {})}
    with Gunicorn(directory / "mixed-load.log", env=settings) as server:
        load = MixedLoad(server.url)
        samples: list[int] = []
        sampler = threading.Thread(target=_sample_rss, args=(server, seconds, samples), daemon=True)
        sampler.start()
        result = load.run_for(seconds)
        sampler.join()
    errors = [*result.inconsistencies[:5]]
    if result.server_errors:
        errors.append(f"{result.server_errors} server errors: {dict(result.statuses)}")
    if result.connection_errors:
        errors.append(f"{result.connection_errors} connection errors")
    errors += [f"hot key {key} had {len(ids)} runIds" for key, ids in result.run_ids_by_key.items() if len(ids) > 1]
    # Flat once full (registry and caches): from the middle to the end of the run, RSS grows under 8 MiB.
    growth = (samples[-1] - samples[len(samples) // 2]) if len(samples) > 2 else 0
    if growth > 8 * 2**20:
        errors.append(f"RSS grew {growth / 2**20:.1f} MiB after the registry was full")
    held = f"{result.requests:,} requests in {result.seconds:.0f} s, RSS +{growth / 2**20:.1f} MiB in the 2nd half"
    return Outcome("mixed load (lookups hot and new, events, SSE, snapshots)", held, errors)


def runs_under_load(directory: Path, runs: int, tokens: int = 2000, burners: int = 3) -> Outcome:
    """New runs one after another on a real gunicorn while other processes take every core.

    Each run's engine is on a native thread and its recorder a greenlet; a wake-up between them
    that gets lost leaves the run unrecorded until some other timer wakes the process, and its
    lookup waits out its whole wait (1 run in ~300 did, before app.serving.concurrency's Bell).
    """
    burn = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass"
    env = {"RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine", "RUN_REGISTRY_ACCESS_LOG": "off"}
    latencies: list[float] = []
    errors: list[str] = []
    with Gunicorn(directory / "runs-under-load.log", env=env) as server:
        hogs = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(burners)]
        try:
            for seed in range(runs):
                started = time.monotonic()
                reply = http("GET", f"{server.url}/runs/lookup?scenarioId=paced-0-{tokens}&seed={seed}", timeout=60)
                latencies.append(time.monotonic() - started)
                if reply.status != 200:
                    errors.append(f"seed {seed}: {reply.status} after {latencies[-1]:.1f} s")
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    latencies.sort()
    held = (f"{runs:,} runs of {tokens + 3:,} events beside {burners} busy processes: median"
            f" {latencies[len(latencies) // 2] * 1000:.0f} ms, slowest {latencies[-1] * 1000:.0f} ms;"
            f" {len(errors)} not answered done")
    return Outcome("new runs under CPU load (engine thread to recorder)", held, errors[:5])


def _sample_rss(server: Gunicorn, seconds: float, samples: list[int]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(server.rss_bytes())
        time.sleep(max(seconds / 20, 0.2))


def flood(keys: int, max_entries: int, hot_every: int = 50) -> Outcome:
    """Distinct keys far beyond the cap, in-process; the hottest keys must stay cached."""
    registry = MemoryRegistry(ttl_ms=3_600_000, max_entries=max_entries)
    service = RunService(registry, _QuickEngine(), Settings(new_runs_per_minute=0, engine_code_hash="flood"))
    errors: list[str] = []
    hot = [f"hot-{index}" for index in range(10)]
    hot_ids = {key: service.lookup(key, 1, SOAK, WAIT_S).run_id for key in hot}
    for index in range(keys):
        service.lookup("flood", index, SOAK, WAIT_S)
        if index % hot_every == 0:
            for key in hot:
                answer = service.lookup(key, 1, SOAK, WAIT_S)
                if (answer.run_id, answer.source) != (hot_ids[key], "cache"):
                    errors.append(f"hot key {key} fell out after {index:,} flooding keys")
        if index % 10_000 == 0 and registry.held_entries() > max_entries:
            errors.append(f"{registry.held_entries()} entries, over the cap of {max_entries}")
    stats = registry.stats(top_scenarios=0)
    if stats.total_entries > max_entries:
        errors.append(f"{stats.total_entries} entries at the end")
    expected_evictions = keys + len(hot) - max_entries
    if stats.evictions != expected_evictions:
        errors.append(f"{stats.evictions} evictions, expected {expected_evictions}")
    return Outcome("flood of distinct keys (in-process)",
                   f"{keys:,} keys against a cap of {max_entries:,}; {stats.evictions:,} evicted, 10 hot keys kept",
                   errors[:5])


def ledger_flood(directory: Path, keys: int, max_keys: int, threads: int = 8) -> Outcome:
    """Distinct keys far beyond the ledger's cap, on both backends (a real redis-server): the cap
    holds throughout, and the most recently checked keys are the ones kept."""
    from app.models import RunIdentity
    from app.models import RunKey
    from app.models import RunRecord
    from app.registry.redis_registry import RedisRegistry
    from harness.servers import RedisServer

    def record_of(index: int) -> RunRecord:
        """A done run's record, without a transcript: the ledger holds digests only."""
        key = RunKey("ledger-flood", index, "flood")
        identity = RunIdentity.of(key, key.run_id(1_795_694_400_000), "quick", "1")
        return RunRecord(identity, 2, hashlib.sha256(b"%d" % index).digest(), b"")

    errors: list[str] = []
    held = []
    redis_dir = directory / "ledger-redis"
    redis_dir.mkdir(exist_ok=True)
    with RedisServer(redis_dir) as server:
        backends = {"memory": MemoryRegistry(3_600_000, 10, ledger_keys=max_keys),
                    "redis": RedisRegistry(server.url, ttl_ms=3_600_000, max_entries=10, ledger_keys=max_keys)}
        for name, registry in backends.items():
            started = time.monotonic()

            def check_range(first: int, registry=registry, name=name) -> None:
                for index in range(first, keys, threads):
                    record = record_of(index)
                    registry.check_reproduction(record, record.events_digest)
                    if index % 50_000 == 0 and registry.ledger_figures(0).keys > max_keys:
                        errors.append(f"{name}: {registry.ledger_figures(0).keys:,} keys, over the cap of {max_keys:,}")

            with ThreadPoolExecutor(max_workers=threads) as pool:
                list(pool.map(check_range, range(threads)))
            newest = record_of(keys)  # checked last of all, whatever order the threads went in
            registry.check_reproduction(newest, newest.events_digest)
            figures = registry.ledger_figures(0)
            if figures.keys != max_keys:
                errors.append(f"{name}: {figures.keys:,} keys at the end, not the cap of {max_keys:,}")
            if figures.reproduced != keys + 1:
                errors.append(f"{name}: {figures.reproduced:,} checks counted of {keys + 1:,}")
            if registry.ledger(newest.identity.cache_key) is None or registry.ledger(
                    record_of(0).identity.cache_key) is not None:
                errors.append(f"{name}: the newest key was forgotten, or the oldest kept")
            if name == "redis":
                client = server.client()
                stored = client.zcard("run-registry:ledger-keys"), len(client.keys("run-registry:ledger:*"))
                if stored != (max_keys, max_keys):
                    errors.append(f"redis: {stored[0]:,} keys listed and {stored[1]:,} entries stored")
                registry.close()  # type: ignore[attr-defined]
            held.append(f"{name} {keys / (time.monotonic() - started):,.0f} checks/s")
    return Outcome("determinism ledger flood (memory, redis-server)",
                   f"{keys:,} keys against a cap of {max_keys:,} on each, {figures.keys:,} kept; {', '.join(held)}",
                   errors[:5])


class _QuickEngine(FakeEngine):
    """The fake engine's transcript, without its bookkeeping: a flood needs a million of them."""

    def run(self, scenario_id: str, seed: int) -> list[dict[str, object]]:
        return [{"type": "start", "data": {"scenarioId": scenario_id, "seed": seed}},
                {"type": "done", "data": {"totalTokens": 0}}]


def expiry_churn(seconds: float, ttl_minutes: float = 0.005, threads: int = 8, keys: int = 20) -> Outcome:
    """A TTL of a fraction of a second under load: every answer consistent, nothing outlives its TTL."""
    engine = FakeEngine()
    settings = Settings(new_runs_per_minute=0, engine_code_hash="churn", ttl_minutes=ttl_minutes)
    registry = MemoryRegistry(settings.ttl_ms, settings.max_entries)
    transcripts = TranscriptCache(settings.transcript_cache_mb * 2**20)
    service = RunService(registry, engine, settings, transcripts=transcripts)
    errors: list[str] = []
    answered: Counter[str] = Counter()
    seen: set[str] = set()
    stop = threading.Event()

    def work(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            # Most lookups on a few busy keys (renewed all the time), the rest on many cold ones,
            # which sit idle past their TTL between lookups and expire under the load.
            seed = rng.randrange(keys) if rng.random() < 0.7 else keys + rng.randrange(50 * keys)
            asked = time.monotonic()
            answer = service.lookup("churn", seed, SOAK, WAIT_S)
            run_id = answer.run_id
            answered[answer.source] += 1
            seen.add(run_id)
            # Renewed to a full TTL since it was asked for: within it, it must be readable and
            # be this key's (a thread kept off the cores longer than a TTL may find it gone).
            try:
                events = json.loads(transcripts.body(service.done_run(run_id, WAIT_S)))["events"]
            except RunNotFound:
                if time.monotonic() - asked < settings.ttl_ms / 1000:
                    errors.append(f"{run_id} was not found within its TTL of the lookup that renewed it")
                continue
            if events[0]["data"]["seed"] != seed or not run_id.startswith(f"run_churn_{seed}_"):
                errors.append(f"{run_id} for seed {seed} holds {events[0]}")

    _run_threads(threads, seconds, work, stop)
    if engine.calls != len(seen):
        errors.append(f"{engine.calls} engine runs made {len(seen)} runIds")
    time.sleep(settings.ttl_ms / 1000 + 0.05)
    survivors = [run_id for run_id in seen if registry.get(run_id) is not None]
    if survivors or registry.stats(top_scenarios=0).total_entries:
        errors.append(f"{len(survivors)} runs outlived their TTL")
    return Outcome(f"expiry churn (TTL {settings.ttl_ms / 1000:g} s, in-process)",
                   f"{sum(answered.values()):,} lookups ({answered['new']:,} new) in {seconds:.0f} s, "
                   f"{len(seen):,} runs expired", errors[:5])


def racing_threads(seconds: float, threads: int = 32, keys: int = 16) -> Outcome:
    """Threads racing on few keys while entries expire and are evicted (cap below the keys)."""
    engine = FakeEngine()
    settings = Settings(new_runs_per_minute=0, engine_code_hash="race", ttl_minutes=0.002, max_entries=keys // 2)
    service = RunService(MemoryRegistry(settings.ttl_ms, settings.max_entries), engine, settings)
    errors: list[str] = []
    owners: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    lookups = refused = 0

    def work(index: int) -> None:
        nonlocal lookups, refused
        rng = random.Random(index)
        while not stop.is_set():
            seed = rng.randrange(keys)
            try:
                run_id = service.lookup("race", seed, SOAK, WAIT_S).run_id
            except Unavailable:  # every entry a running run: refused, and nothing started
                with lock:
                    refused += 1
                continue
            with lock:
                lookups += 1
                if owners.setdefault(run_id, seed) != seed:
                    errors.append(f"{run_id} answered for seeds {owners[run_id]} and {seed}")

    _run_threads(threads, seconds, work, stop)
    if engine.calls != len(owners):
        errors.append(f"{engine.calls} engine runs made {len(owners)} runIds: a key ran twice at once")
    return Outcome("racing threads on expiring, evicted keys (in-process)",
                   f"{lookups:,} lookups by {threads} threads on {keys} keys, {len(owners):,} runs"
                   f" ({refused:,} refused while every entry was running)", errors[:5])


def lookup_answers(url: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    return {key: http("GET", f"{url}/runs/lookup?scenarioId={key[0]}&seed={key[1]}").json()["runId"] for key in keys}


def faults_on_redis(directory: Path, seconds: float) -> Outcome:
    """The mixed load on 4 workers sharing Redis, while a worker is SIGKILLed and Redis restarted."""
    from harness.servers import RedisServer
    from harness.servers import free_port

    port = free_port()
    redis_dir = directory / "redis"
    redis_dir.mkdir(exist_ok=True)
    original, restarted = RedisServer(redis_dir, port=port), RedisServer(redis_dir, port=port)
    errors: list[str] = []
    lost = 0
    try:
        original.start()
        env = {"RUN_REGISTRY_URL": original.url, "WEB_CONCURRENCY": "4", "RUN_REGISTRY_ACCESS_LOG": "off",
               "RUN_REGISTRY_REDIS_TIMEOUT_MS": "300"}
        with Gunicorn(directory / "faults.log", env=env) as server:
            load = MixedLoad(server.url, tolerate_unavailable=True)
            runner = threading.Thread(target=load.run_for, args=(seconds,), daemon=True)
            runner.start()
            kept = [(f"kept-{index}", index) for index in range(20)]
            before = lookup_answers(server.url, kept)
            time.sleep(seconds / 3)
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)  # the master replaces it; Redis keeps every entry
            time.sleep(1)
            after = lookup_answers(server.url, kept)
            lost = sum(before[key] != after[key] for key in kept)
            time.sleep(seconds / 3)
            original.stop(signal.SIGKILL)  # Redis gone: 503s, promptly
            time.sleep(1)
            restarted.start()  # back, empty (it keeps nothing on disk): the service recovers by itself
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and http("GET", f"{server.url}/readyz").status != 200:
                time.sleep(0.1)
            if http("GET", f"{server.url}/runs/lookup?scenarioId=after&seed=1").status != 200:
                errors.append("no recovery after Redis came back")
            runner.join()
            booted = server.log().count("Booting worker")
    finally:
        original.stop(signal.SIGKILL)
        restarted.stop()
    result = load.result
    errors += result.inconsistencies[:5]
    unexpected = {status: count for status, count in result.statuses.items() if status >= 500 and status != 503}
    if unexpected:
        errors.append(f"server errors other than 503 during the outage: {unexpected}")
    if booted != 5:
        errors.append(f"{booted} workers booted: the killed one was not replaced once")
    if lost:
        errors.append(f"{lost} runs lost with the killed worker")
    return Outcome(
        "faults on Redis, 4 workers: SIGKILL of a worker, Redis killed and restarted",
        f"{result.requests:,} requests in {result.seconds:.0f} s; {result.statuses.get(503, 0):,} answered 503 "
        f"during the outage, {result.connection_errors} cut with the killed worker",
        errors, lost)


def _run_threads(threads: int, seconds: float, work: Callable[[int], None], stop: threading.Event) -> None:
    """``work(index)`` on each of ``threads`` threads until ``seconds`` pass; their errors are raised."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(work, index) for index in range(threads)]
        stop.wait(seconds)
        stop.set()
        for future in futures:
            future.result(timeout=60)


def fleet_under_chaos(directory: Path, seconds: float, releases: tuple[str, ...] = ("release-a", "release-b")
                      ) -> Outcome:
    """Queue execution under load with two engineCodeHash releases side by side (a web process and
    two workers each), workers SIGKILLed in a loop, and Redis restarted mid-run. Nothing may
    execute twice, no run may stay running, and no live stream may differ from its run's replay."""
    from harness.servers import ProcfileProcess
    from harness.servers import RedisServer
    from harness.servers import free_port

    port = free_port()
    redis_dir = directory / "fleet-redis"
    redis_dir.mkdir(exist_ok=True)
    executions = directory / "fleet-executions"
    errors: list[str] = []
    statuses: Counter[int] = Counter()
    streams_checked = kills = 0
    stop = threading.Event()
    lock = threading.Lock()
    server = RedisServer(redis_dir, port=port).start()
    env_of = {release: {"RUN_REGISTRY_URL": server.url, "RUN_REGISTRY_EXECUTION": "queue", "WEB_CONCURRENCY": "1",
                        "ENGINE_CODE_HASH": release, "RUN_REGISTRY_ENGINE": "harness.fakes:FileCountingEngine",
                        "RUN_REGISTRY_TEST_EXECUTIONS": str(executions), "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS": "100",
                        "RUN_REGISTRY_LEASE_S": "3", "RUN_REGISTRY_QUEUE_WAIT_S": "10",
                        "RUN_REGISTRY_ACCESS_LOG": "off", "RUN_REGISTRY_REDIS_TIMEOUT_MS": "300"}
              for release in releases}
    webs = {release: ProcfileProcess("web", directory / f"fleet-{release}-web.log", env).start()
            for release, env in env_of.items()}
    workers = [ProcfileProcess("worker", directory / f"fleet-{release}-w{index}.log", env_of[release]).start()
               for release in releases for index in range(2)]
    started_runs = 0  # runs the registry started, summed over Redis's lives

    def load(index: int) -> None:
        nonlocal streams_checked
        rng = random.Random(index)
        while not stop.is_set():
            release = rng.choice(releases)
            url = webs[release].url
            try:
                reply = http("GET", f"{url}/runs/lookup?scenarioId=chaos&seed={rng.randrange(40)}",
                             headers={"Prefer": "respond-async"}, timeout=30)
                with lock:
                    statuses[reply.status] += 1
                if reply.status not in (200, 202):
                    if reply.status not in (500, 503):  # a run killed with its worker; Redis away
                        errors.append(f"lookup answered {reply.status}: {reply.body[:200]!r}")
                    continue
                run_id = reply.json()["runId"]
                live = _sse(url, run_id)
                if b"event: error" in live:
                    continue  # its executor was killed, or Redis lost it: the stream said so
                replay = _sse(url, run_id)
                with lock:
                    streams_checked += 1
                if live.replace(b": keepalive\n\n", b"") != replay and b"event: error" not in replay:
                    errors.append(f"the live stream of {run_id} differs from its replay")
            except OSError:
                with lock:
                    statuses[0] += 1  # a connection cut while Redis restarted

    threads = [threading.Thread(target=load, args=(index,), daemon=True) for index in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + seconds
        restarted = False
        while time.monotonic() < deadline:
            time.sleep(2)
            victim = random.choice(workers)
            victim.stop(signal.SIGKILL)
            kills += 1
            release = next(r for r in releases if victim.env["ENGINE_CODE_HASH"] == r)
            workers[workers.index(victim)] = ProcfileProcess(
                "worker", directory / f"fleet-{release}-w{kills}.log", env_of[release]).start()
            if not restarted and time.monotonic() > deadline - seconds / 2:
                started_runs += _runs_started(webs[releases[0]].url)
                server.stop(signal.SIGKILL)
                time.sleep(1)
                server = RedisServer(redis_dir, port=port).start()  # back, empty: nothing kept on disk
                restarted = True
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        # Every run ends: done, or failed once its executor's lease lapsed.
        end = time.monotonic() + 30
        while time.monotonic() < end and http("GET", f"{webs[releases[0]].url}/registry/stats").json()["running"]:
            time.sleep(0.5)
        running = http("GET", f"{webs[releases[0]].url}/registry/stats").json()["running"]
        if running:
            errors.append(f"{running} runs still running 30 s after the load stopped")
        started_runs += _runs_started(webs[releases[0]].url)
    finally:
        stop.set()
        for process in [*webs.values(), *workers]:
            process.stop(signal.SIGKILL)
        server.stop()
    executed = len(executions.read_text().splitlines()) if executions.exists() else 0
    if executed > started_runs:
        errors.append(f"{executed} engine executions for {started_runs} runs started: a run executed twice")
    held = (f"{sum(statuses.values()):,} lookups, {started_runs:,} runs on {kills} killed and replaced workers,"
            f" Redis restarted once; {streams_checked:,} live streams equal to their replay;"
            f" answers {dict(sorted(statuses.items()))}")
    return Outcome("the fleet: 2 releases side by side, workers SIGKILLed in a loop, Redis restarted", held,
                   errors[:5])


def _runs_started(url: str) -> int:
    return int(http("GET", f"{url}/registry/stats").json()["misses"])


def _sse(url: str, run_id: str) -> bytes:
    import http.client as http_client

    host, port = url.removeprefix("http://").split(":")
    connection = http_client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("GET", f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"})
        return connection.getresponse().read()
    finally:
        connection.close()


def hostile_clients(directory: Path, seconds: float, slow_bodies: int, readers: int, costly_heads: int,
                    client_timeout_s: float = 2.0) -> Outcome:
    """Bodies sent a byte a second, readers that pipeline requests and never read, and heads built
    to cost a parser CPU, all at once against one web process, while /healthz and lookup hits are
    asked every 50 ms. Each must answer within 2 s, every slow body must be answered 408 (or
    closed) within the client timeout plus a second, and every stalled reader dropped."""
    import collections
    import resource
    import selectors

    from harness import hostile

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    env = {"RUN_REGISTRY_ENGINE": "harness.fakes:ScenarioPacedEngine", "RUN_REGISTRY_ACCESS_LOG": "off",
           "RUN_REGISTRY_CLIENT_TIMEOUT_S": f"{client_timeout_s:g}"}
    errors: list[str] = []
    with Gunicorn(directory / "hostile-clients.log", env=env) as server:
        lookup = f"{server.url}/runs/lookup?scenarioId=paced-0-2000&seed=1"
        run_id = http("GET", lookup).json()["runId"]  # about 130 KB of events: 40 of them fill any buffer
        stop = threading.Event()
        # The probe runs in a process of its own: in this one it would wait for the attacker's loop.
        prober = subprocess.Popen([sys.executable, "-m", "harness.hostile", str(seconds), f"{server.url}/healthz",
                                   lookup], cwd=ROOT, stdout=subprocess.PIPE, text=True)

        def costly() -> int:
            sent = 0
            while not stop.is_set() and sent < costly_heads:
                request = (b"GET /runs/lookup?scenarioId=paced-0-2000&seed=1 HTTP/1.1\r\nHost: x\r\n"
                           + hostile.COSTLY_HEAD + b"Connection: close\r\n\r\n")
                with hostile.connect(server.port) as sock:
                    sock.sendall(request)
                    if not sock.recv(64).startswith(b"HTTP/1.1 200"):
                        errors.append("a costly head was not answered 200")
                sent += 1
            return sent

        with ThreadPoolExecutor(max_workers=1) as pool:
            heads = pool.submit(costly)
            stalled = [hostile.start_pipelined_reader(server.port, f"/runs/{run_id}/events") for _ in range(readers)]
            answered, held_too_long, opened, longest = 0, 0, 0, 0.0
            # When each slow body is opened: all at once, then each a second after it was answered
            # or closed, as a slowloris keeps its connections up.
            due = collections.deque([time.monotonic()] * slow_bodies)
            selector = selectors.DefaultSelector()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                while due and due[0] <= time.monotonic():  # a slot whose turn it is: opened (again)
                    due.popleft()
                    sock = hostile.start_slow_body(server.port)
                    sock.setblocking(False)
                    selector.register(sock, selectors.EVENT_READ, time.monotonic())
                    opened += 1
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj
                    try:
                        answer = sock.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        answer = b""
                    answered += answer.startswith(b"HTTP/1.1 408")
                    longest = max(longest, time.monotonic() - key.data)
                    due.append(time.monotonic() + 1)
                    selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                now = time.monotonic()
                for key in list(selector.get_map().values()):
                    if now - key.data > client_timeout_s + 1:
                        held_too_long += 1
                        due.append(now + 1)
                        selector.unregister(key.fileobj)
                        key.fileobj.close()  # type: ignore[union-attr]
                        continue
                    with contextlib.suppress(OSError):
                        key.fileobj.send(b" ")  # type: ignore[union-attr]
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            dropped = sum(hostile.answers_until_closed(reader, timeout=5) < 40 for reader in stalled)
            for reader in stalled:
                reader.close()
            stop.set()
            sent_heads = heads.result(timeout=60)
        probed = json.loads(prober.communicate(timeout=60)[0])
    probe_seconds = probed["seconds"]
    errors += probed["failures"][:3]
    if held_too_long:
        errors.append(f"{held_too_long} slow bodies held past the client timeout")
    if dropped != readers:
        errors.append(f"{readers - dropped} of {readers} stalled readers were never dropped")
    p99 = sorted(probe_seconds)[int(len(probe_seconds) * 0.99)] if probe_seconds else float("nan")
    return Outcome(
        "hostile clients: slow bodies, stalled pipelined readers, heads built to backtrack",
        f"{opened:,} slow bodies ({answered:,} answered 408, the last {longest:.1f} s after its head; timeout "
        f"{client_timeout_s:g} s), "
        f"{dropped} of {readers} stalled readers dropped, {sent_heads} costly heads; /healthz and hits "
        f"p99 {p99 * 1000:.0f} ms over {len(probe_seconds):,} probes",
        errors[:5])
