"""The Redis backend: the shared contract against a real redis-server, plus the fleet's guarantees."""

from __future__ import annotations

import functools
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.registry.base import RegistryUnavailable
from app.registry.redis_registry import RedisRegistry
from tests.registry.contract import Builder
from tests.registry.contract import RegistryContract
from tests.registry.contract import record
from tests.registry.contract import run_id
from tests.servers import RedisServer
from tests.servers import free_port

# Redis keeps its own clock, which freezegun cannot move: these tests wait for real.
TTL_MS = 600
pytestmark = pytest.mark.server


@pytest.fixture
def make_registry(redis_url):
    registries = []

    def make(max_entries=100, **options):
        registry = RedisRegistry(redis_url, ttl_ms=options.pop("ttl_ms", TTL_MS), max_entries=max_entries, **options)
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        registry.close()


class TestRedisRegistry(RegistryContract):
    @pytest.fixture
    def ttl_ms(self):
        return TTL_MS

    @pytest.fixture
    def advance(self):
        return lambda ms: time.sleep(ms / 1000 + 0.05)


def test_key_and_run_record_expire_at_the_same_instant(make_registry, redis_server):
    registry = make_registry()
    registry.create_once("k1", Builder(record()))
    client = redis_server.client()
    prefix = "run-registry:"
    assert client.pexpiretime(f"{prefix}key:k1") == client.pexpiretime(f"{prefix}run:{run_id()}") > 0
    registry.touch("k1")
    assert client.pexpiretime(f"{prefix}key:k1") == client.pexpiretime(f"{prefix}run:{run_id()}")
    assert client.pexpiretime(f"{prefix}run:{run_id()}") == registry.get(run_id()).expires_at


def test_two_processes_racing_on_one_key_build_once(make_registry):
    """Two registries on one Redis are two processes: no shared lock, only Redis."""
    processes = [make_registry(), make_registry()]
    gate = threading.Event()
    builds = [Builder(record(), gate=gate), Builder(record(created_at=2), gate=gate)]
    start = threading.Barrier(32)

    def create(index):
        start.wait()
        return processes[index % 2].create_once("k1", builds[index % 2])

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(create, index) for index in range(32)]
        deadline = time.monotonic() + 30
        while not any(build.entered.is_set() for build in builds) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # let every other caller reach its wait on the claim
        gate.set()
        results = [future.result(timeout=30) for future in futures]
    assert builds[0].calls + builds[1].calls == 1
    assert len({result_id for result_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_a_claim_whose_holder_died_is_taken_over_after_it_expires(make_registry, redis_server):
    registry = make_registry()
    client = redis_server.client()
    client.set("run-registry:claim:k1", "dead-holder", px=300)  # a worker that died mid-run

    def build():
        assert client.get("run-registry:claim:k1") != b"dead-holder", "built while the dead claim still held"
        return record()

    assert registry.create_once("k1", build) == (run_id(), True)


def test_a_long_run_keeps_its_claim_alive(make_registry):
    """The holder extends its claim while the engine runs, so nobody else runs it meanwhile."""
    holder, other = make_registry(claim_ms=300), make_registry(claim_ms=300)
    gate = threading.Event()
    slow = Builder(record(), gate=gate)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(holder.create_once, "k1", slow)
        assert slow.entered.wait(timeout=30)
        second = pool.submit(other.create_once, "k1", Builder(record(created_at=4)))
        time.sleep(1.0)  # more than three claim lifetimes
        assert not second.done()
        gate.set()
        assert first.result(timeout=30) == (run_id(), True)
        assert second.result(timeout=30) == (run_id(), False)


def test_a_failed_build_releases_its_claim_at_once(make_registry, redis_server):
    registry = make_registry()
    with pytest.raises(RuntimeError):
        registry.create_once("k1", Builder(record(), error=RuntimeError("boom")))
    assert redis_server.client().exists("run-registry:claim:k1") == 0


def test_entries_are_shared_by_every_instance_and_outlive_them(make_registry):
    first = make_registry()
    first.create_once("k1", Builder(record()))
    first.close()
    later = make_registry()  # a restarted service
    assert later.touch("k1") == run_id()
    assert later.get(run_id()).hits == 1


def test_unreachable_redis_is_registry_unavailable_promptly():
    registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", ttl_ms=TTL_MS, max_entries=10, timeout_ms=200)
    for call in (lambda: registry.touch("k1"), lambda: registry.get(run_id()), registry.stats,
                 lambda: registry.create_once("k1", Builder(record()))):
        with pytest.raises(RegistryUnavailable):
            call()


def test_a_hung_redis_times_out_and_recovers(tmp_path):
    with RedisServer(tmp_path) as server:
        registry = RedisRegistry(server.url, ttl_ms=60_000, max_entries=10, timeout_ms=200)
        registry.create_once("k1", Builder(record()))
        server.stop(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            registry.touch("k1")
        waited = time.monotonic() - started
        server.stop(signal.SIGCONT)
        assert registry.touch("k1") == run_id()
    assert waited < 2  # two tries of a 200 ms timeout, not the default 5 s each


def test_a_restarted_redis_is_used_again_without_restarting_the_service(tmp_path):
    port = free_port()
    server = RedisServer(tmp_path, port=port).start()
    registry = RedisRegistry(server.url, ttl_ms=60_000, max_entries=10, timeout_ms=200)
    registry.create_once("k1", Builder(record()))
    server.stop(signal.SIGKILL)
    with pytest.raises(RegistryUnavailable):
        registry.touch("k1")
    with RedisServer(tmp_path, port=port):
        assert registry.touch("k1") is None  # it kept nothing on disk: a new, empty registry
        assert registry.create_once("k1", Builder(record())) == (run_id(), True)


def test_an_entry_whose_run_redis_evicted_is_absent(make_registry, redis_server):
    """Under Redis' own memory policy a run hash may go before its key: never a half entry."""
    registry = make_registry()
    registry.create_once("k1", Builder(record()))
    redis_server.client().delete(f"run-registry:run:{run_id()}")
    assert registry.touch("k1") is None
    assert registry.create_once("k1", Builder(record(created_at=5))) == (run_id(created_at=5), True)


def test_prefixes_keep_registries_apart(redis_url):
    make = functools.partial(RedisRegistry, redis_url, TTL_MS, 10)
    staging, production = make(prefix="staging:"), make(prefix="production:")
    staging.create_once("k1", Builder(record()))
    assert production.touch("k1") is None and production.stats().total_entries == 0
