"""The Redis backend: the shared contract against a real redis-server, plus the fleet's guarantees."""

from __future__ import annotations

import functools
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from freezegun import freeze_time

from app.models import RunKey
from app.registry.base import RegistryUnavailable
from app.registry.redis_registry import RedisRegistry
from tests.registry.contract import Builder
from tests.registry.contract import RegistryContract
from tests.registry.contract import create
from tests.registry.contract import key
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

    @pytest.fixture
    def frozen_ms(self):
        return lambda: freeze_time("2026-11-26 12:00:00")  # the service's clock; Redis keeps its own


def test_key_and_run_record_expire_at_the_same_instant(make_registry, redis_server):
    registry = make_registry()
    run_id = create(registry)
    client = redis_server.client()
    prefix = "run-registry:"
    entry, run = f"{prefix}key:{key().digest}", f"{prefix}run:{run_id}"
    assert client.pexpiretime(entry) == client.pexpiretime(run) > 0
    registry.touch(key().digest)
    assert client.pexpiretime(entry) == client.pexpiretime(run)
    assert client.pexpiretime(run) == registry.get(run_id).expires_at


def test_two_processes_racing_on_one_key_build_once(make_registry):
    """Two registries on one Redis are two processes: no shared lock, only Redis."""
    processes = [make_registry(), make_registry()]
    gate = threading.Event()
    builds = [Builder(key(), gate=gate), Builder(key(), gate=gate)]
    start = threading.Barrier(32)

    def create_one(index):
        start.wait()
        return processes[index % 2].create_once(key(), builds[index % 2])

    with ThreadPoolExecutor(max_workers=32) as pool:
        futures = [pool.submit(create_one, index) for index in range(32)]
        deadline = time.monotonic() + 30
        while not any(build.entered.is_set() for build in builds) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # let every other caller reach its wait on the claim
        gate.set()
        results = [future.result(timeout=30) for future in futures]
    assert builds[0].calls + builds[1].calls == 1
    assert len({result_id for result_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_two_deploys_asking_for_one_scenario_at_one_moment_get_two_run_ids(make_registry, redis_server):
    """Deploys A and B (two engineCodeHash, so two cache keys) share the runId's scenario, seed
    and millisecond: each run must keep a runId of its own, and its own record."""
    deploy_a, deploy_b = make_registry(), make_registry()
    key_a, key_b = RunKey("pricing-v1", 42, "deploy-a"), RunKey("pricing-v1", 42, "deploy-b")
    def create_one(registry, run_key, start):
        start.wait()
        return registry.create_once(run_key, Builder(run_key))[0]

    for attempt in range(20):
        redis_server.client().flushall()
        start = threading.Barrier(2)

        with ThreadPoolExecutor(max_workers=2) as pool, freeze_time(f"2026-11-26 12:00:{attempt:02d}"):
            run_a = pool.submit(create_one, deploy_a, key_a, start)
            run_b = pool.submit(create_one, deploy_b, key_b, start)
            run_a, run_b = run_a.result(timeout=30), run_b.result(timeout=30)
        assert run_a != run_b
        assert deploy_a.get(run_a).record.engine_code_hash == "deploy-a"
        assert deploy_b.get(run_b).record.engine_code_hash == "deploy-b"


def test_a_claim_whose_holder_died_is_taken_over_after_it_expires(make_registry, redis_server):
    registry = make_registry()
    client = redis_server.client()
    claim = f"run-registry:claim:{key().digest}"
    client.set(claim, "dead-holder", px=300)  # a worker that died mid-run

    def build(run_id):
        assert client.get(claim) != b"dead-holder", "built while the dead claim still held"
        return Builder(key())(run_id)

    assert registry.create_once(key(), build)[1] is True


def test_a_long_run_keeps_its_claim_alive(make_registry):
    """The holder extends its claim while the engine runs, so nobody else runs it meanwhile."""
    holder, other = make_registry(claim_ms=300), make_registry(claim_ms=300)
    gate = threading.Event()
    slow = Builder(key(), gate=gate)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(holder.create_once, key(), slow)
        assert slow.entered.wait(timeout=30)
        second = pool.submit(other.create_once, key(), Builder(key()))
        time.sleep(1.0)  # more than three claim lifetimes
        assert not second.done()
        gate.set()
        run_id = slow.run_ids[0]
        assert first.result(timeout=30) == (run_id, True)
        assert second.result(timeout=30) == (run_id, False)


def test_a_failed_build_releases_its_claim_and_run_id_at_once(make_registry, redis_server):
    registry = make_registry()
    build = Builder(key(), error=RuntimeError("boom"))
    with pytest.raises(RuntimeError):
        registry.create_once(key(), build)
    client = redis_server.client()
    assert client.exists(f"run-registry:claim:{key().digest}", f"run-registry:runid:{build.run_ids[0]}") == 0


def test_entries_are_shared_by_every_instance_and_outlive_them(make_registry):
    first = make_registry()
    run_id = create(first)
    first.close()
    later = make_registry()  # a restarted service
    assert later.touch(key().digest) == run_id
    assert later.get(run_id).hits == 1


def test_unreachable_redis_is_registry_unavailable_promptly():
    registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", ttl_ms=TTL_MS, max_entries=10, timeout_ms=200)
    for call in (lambda: registry.touch(key().digest), lambda: registry.get(key().run_id(1)),
                 lambda: registry.stats(top_scenarios=20), lambda: registry.create_once(key(), Builder(key()))):
        with pytest.raises(RegistryUnavailable):
            call()


def test_a_hung_redis_times_out_and_recovers(tmp_path):
    with RedisServer(tmp_path) as server:
        registry = RedisRegistry(server.url, ttl_ms=60_000, max_entries=10, timeout_ms=200)
        run_id = create(registry)
        server.stop(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable):
            registry.touch(key().digest)
        waited = time.monotonic() - started
        server.stop(signal.SIGCONT)
        assert registry.touch(key().digest) == run_id
    assert waited < 2  # two tries of a 200 ms timeout, not the default 5 s each


def test_a_restarted_redis_is_used_again_without_restarting_the_service(tmp_path):
    port = free_port()
    server = RedisServer(tmp_path, port=port).start()
    registry = RedisRegistry(server.url, ttl_ms=60_000, max_entries=10, timeout_ms=200)
    create(registry)
    server.stop(signal.SIGKILL)
    with pytest.raises(RegistryUnavailable):
        registry.touch(key().digest)
    with RedisServer(tmp_path, port=port):
        assert registry.touch(key().digest) is None  # it kept nothing on disk: a new, empty registry
        assert registry.create_once(key(), Builder(key()))[1] is True


def test_an_entry_whose_run_redis_evicted_is_absent(make_registry, redis_server):
    """Under Redis' own memory policy a run hash may go before its key: never a half entry."""
    registry = make_registry()
    run_id = create(registry)
    redis_server.client().delete(f"run-registry:run:{run_id}")
    assert registry.touch(key().digest) is None
    assert registry.create_once(key(), Builder(key()))[1] is True


@pytest.mark.parametrize(
    "damage",
    [
        lambda client, run: (client.delete(run), client.set(run, "a string where a run was")),
        lambda client, run: client.hdel(run, "bodyGzip", "eventsDigest"),
        lambda client, run: client.hset(run, "count", "many"),
        lambda client, run: (client.delete(run), client.rpush(run, "a", "list")),
    ],
    ids=["string", "missing-fields", "unreadable-count", "list"],
)
def test_a_foreign_or_malformed_record_is_absent_and_logged_once(make_registry, redis_server, damage, caplog):
    registry = make_registry()
    run_id = create(registry)
    damage(redis_server.client(), f"run-registry:run:{run_id}")
    assert [registry.get(run_id) for _ in range(3)] == [None] * 3
    assert registry.touch(key().digest) is None  # the lookup is a miss, not a 503 or a 500
    defects = [r for r in caplog.records if r.name == "app.registry.redis_registry" and r.levelname == "ERROR"]
    assert len(defects) == 1 and run_id in defects[0].getMessage()


def test_a_foreign_value_at_an_entry_key_is_a_miss(make_registry, redis_server):
    registry = make_registry()
    redis_server.client().hset(f"run-registry:key:{key().digest}", "not", "ours")
    assert registry.touch(key().digest) is None
    assert registry.create_once(key(), Builder(key()))[1] is True  # stored over it


def test_prefixes_keep_registries_apart(redis_url):
    make = functools.partial(RedisRegistry, redis_url, TTL_MS, 10)
    staging, production = make(prefix="staging:"), make(prefix="production:")
    create(staging)
    assert production.touch(key().digest) is None and production.stats(top_scenarios=20).total_entries == 0
