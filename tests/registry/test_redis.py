"""The Redis backend: the shared contract against a real redis-server, plus the fleet's guarantees."""

from __future__ import annotations

import functools
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from freezegun import freeze_time

from app.models import RunError
from app.models import RunKey
from app.models import RunRecord
from app.registry.base import RegistryUnavailable
from app.registry.redis_connection import POOL_CONNECTIONS
from app.registry.redis_connection import redis_pool
from app.registry.redis_registry import RedisRegistry
from harness.servers import RedisServer
from harness.servers import free_port
from harness.servers import wait_until
from tests.registry.contract import EVENTS
from tests.registry.contract import RegistryContract
from tests.registry.contract import create
from tests.registry.contract import identity
from tests.registry.contract import key
from tests.registry.contract import start

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
    def ledger_wait(self, advance):
        return 300, advance  # Redis keeps its own clock: a short ledger time, waited for

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


def test_a_running_run_and_its_entry_have_no_expiry(make_registry, redis_server):
    registry = make_registry()
    run_id = start(registry).run_id
    client = redis_server.client()
    assert client.pttl(f"run-registry:key:{key().digest}") == client.pttl(f"run-registry:run:{run_id}") == -1


def test_events_go_to_a_stream_with_ids_equal_to_positions_and_an_end_entry(make_registry, redis_server):
    registry = make_registry()
    run_id = create(registry)
    entries = redis_server.client().xrange(f"run-registry:stream:{run_id}")
    assert [entry_id for entry_id, _ in entries] == [b"0-1", b"0-2", b"0-3", b"0-4"]
    assert [(fields[b"t"].decode(), fields[b"d"]) for _, fields in entries[:3]] == EVENTS
    assert entries[3][1] == {b"end": b"done"}


def test_two_processes_starting_one_key_start_one_run(make_registry):
    """Two registries on one Redis are two processes: no shared lock, only Redis."""
    processes = [make_registry(), make_registry()]
    barrier = threading.Barrier(32)

    def start_one(index):
        barrier.wait()
        return start(processes[index % 2], owner=f"owner-{index}")

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(start_one, range(32)))
    assert sum(result.started for result in results) == 1
    assert len({result.run_id for result in results}) == 1


def test_two_deploys_asking_for_one_scenario_at_one_moment_get_two_run_ids(make_registry, redis_server):
    """Deploys A and B (two engineCodeHash, so two cache keys) share the runId's scenario, seed
    and millisecond: each run must keep a runId of its own, and its own record."""
    deploy_a, deploy_b = make_registry(), make_registry()
    key_a, key_b = RunKey("pricing-v1", 42, "deploy-a"), RunKey("pricing-v1", 42, "deploy-b")

    def start_one(registry, run_key, barrier):
        barrier.wait()
        return start(registry, run_key).run_id

    for attempt in range(20):
        redis_server.client().flushall()
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(max_workers=2) as pool, freeze_time(f"2026-11-26 12:00:{attempt:02d}"):
            run_a = pool.submit(start_one, deploy_a, key_a, barrier)
            run_b = pool.submit(start_one, deploy_b, key_b, barrier)
            run_a, run_b = run_a.result(timeout=30), run_b.result(timeout=30)
        assert run_a != run_b
        assert deploy_a.get(run_a).identity.engine_code_hash == "deploy-a"
        assert deploy_b.get(run_b).identity.engine_code_hash == "deploy-b"


def test_a_run_is_watched_live_from_another_process(make_registry):
    executor, watcher = make_registry(), make_registry()
    run_id = start(executor).run_id
    log = watcher.open_log(run_id)
    assert log.read(0, timeout=0.2).events == []
    executor.append(run_id, "owner-1", 1, EVENTS[:1])
    assert log.read(0, timeout=10).events == EVENTS[:1]
    executor.append(run_id, "owner-1", 2, EVENTS[1:])
    executor.finish(run_id, "owner-1", RunRecord.create(identity(key(), run_id), EVENTS))
    assert log.wait_end(10) == "done"
    assert log.read(0, timeout=1).events == EVENTS
    assert watcher.open_log(run_id) is None  # done: its record serves it from now on


def test_a_run_whose_executor_died_fails_once_its_lease_lapses(make_registry):
    executor = make_registry(lease_ms=300)
    run_id = start(executor).run_id
    executor.append(run_id, "owner-1", 1, EVENTS[:1])
    watcher = make_registry()
    log = watcher.open_log(run_id)
    executor.close()  # the process is gone: nobody renews its lease
    ending = log.wait_end(15)
    assert isinstance(ending, RunError) and "stopped before it ended" in ending.message
    assert watcher.get(run_id).status == "failed"
    assert watcher.touch(key().digest) is None  # the next lookup starts a new run
    assert not executor_append(watcher, run_id)


def executor_append(registry, run_id):
    return registry.append(run_id, "owner-1", 2, EVENTS[1:2])


def test_a_queued_run_is_executed_by_one_job_only_however_often_it_is_delivered(make_registry):
    """Exactly once stays ours: RQ may deliver a job twice; only the first take-over executes."""
    web, worker, redelivered = make_registry(), make_registry(), make_registry()
    run_id = start(web).run_id
    assert web.hand_over(run_id, "owner-1", wait_ms=10_000)
    assert worker.take_over(run_id, "owner-1", executor="worker-1")
    assert not redelivered.take_over(run_id, "owner-1", executor="worker-2")  # the same job again
    assert not worker.take_over(run_id, "another-token", executor="worker-3")  # not its job
    assert worker.append(run_id, "owner-1", 1, EVENTS[:1])
    assert not worker.append(run_id, "owner-1", 1, EVENTS[1:2])  # a position recorded already, otherwise


def test_a_retried_start_or_take_over_that_landed_is_the_callers_own(make_registry):
    """A start or a take-over whose answer was lost (a timeout) is retried: the retry must find
    the run its caller's, or nobody executes it."""
    web, worker = make_registry(), make_registry()
    first = start(web)
    again = start(web)  # the same owner token: the very start, retried
    assert (again.started, again.run_id) == (True, first.run_id)
    assert not start(make_registry(), owner="owner-2").started  # anyone else finds it
    assert web.hand_over(first.run_id, "owner-1", wait_ms=10_000)
    assert worker.take_over(first.run_id, "owner-1", executor="worker-1")
    assert worker.take_over(first.run_id, "owner-1", executor="worker-1")  # retried by the same executor
    assert not make_registry().take_over(first.run_id, "owner-1", executor="worker-2")


def test_a_zombie_job_can_neither_append_nor_overwrite_after_its_run_failed(make_registry):
    """A worker paused past its lease (a zombie) wakes after its run was failed: nothing it
    writes lands, and the failure stays as it was."""
    web, zombie = make_registry(), make_registry(lease_ms=300)
    run_id = start(web).run_id
    web.hand_over(run_id, "owner-1", wait_ms=10_000)
    assert zombie.take_over(run_id, "owner-1", executor="zombie")
    assert zombie.append(run_id, "owner-1", 1, EVENTS[:1])
    zombie.close()  # stops renewing: as good as paused
    wait_until(lambda: web.reap() or web.get(run_id).status == "failed", timeout=15)
    failed = web.get(run_id)
    assert failed.status == "failed" and failed.count == 1
    assert not zombie.append(run_id, "owner-1", 2, EVENTS[1:2])
    record = RunRecord.create(identity(key(), run_id), EVENTS[:1])
    assert not zombie.finish(run_id, "owner-1", record)
    assert web.get(run_id) == failed


def test_a_queued_run_no_worker_took_in_time_is_not_executed_late(make_registry):
    web, late = make_registry(), make_registry()
    run_id = start(web).run_id
    web.hand_over(run_id, "owner-1", wait_ms=200)
    wait_until(lambda: web.reap() or web.get(run_id).status == "failed", timeout=15)
    assert web.get(run_id).error.message.startswith("No worker took this run in time")
    assert not late.take_over(run_id, "owner-1", executor="late-worker")


def test_a_live_executor_keeps_its_lease(make_registry, redis_server):
    executor = make_registry(lease_ms=300)
    run_id = start(executor).run_id
    time.sleep(1.2)  # four lease lifetimes: renewed every third of one
    assert make_registry().reap() == 0
    assert executor.get(run_id).status == "running"


def test_entries_are_shared_by_every_instance_and_outlive_them(make_registry):
    first = make_registry()
    run_id = create(first)
    first.close()
    later = make_registry()  # a restarted service
    assert later.touch(key().digest).run_id == run_id
    assert later.get(run_id).hits == 1


def test_unreachable_redis_is_registry_unavailable_promptly():
    registry = RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", ttl_ms=TTL_MS, max_entries=10, timeout_ms=200)
    for call in (lambda: registry.touch(key().digest), lambda: registry.get(key().run_id(1)),
                 lambda: registry.stats(top_scenarios=20), lambda: start(registry)):
        with pytest.raises(RegistryUnavailable):
            call()
    registry.close()


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
        assert registry.touch(key().digest).run_id == run_id
        registry.close()
    assert waited < 2  # two tries of a 200 ms timeout, not the default 5 s each


def test_a_burst_of_commands_beyond_the_pool_waits_for_connections_instead_of_failing(make_registry, redis_server):
    """Hundreds of greenlets reach Redis at once under gevent; redis-py's default pool refused
    the 101st concurrent command. Redis paused, every command of the burst is in flight at once."""
    # Not the contract's 600 ms TTL: on a loaded machine 212 threads outlived the run they read.
    registry = make_registry(timeout_ms=3000, ttl_ms=60_000)
    run_id = create(registry)
    admin = redis_server.client()
    clients_before = len(admin.client_list())
    burst = 3 * POOL_CONNECTIONS + 20  # beyond our pool, and beyond redis-py's default of 100
    admin.execute_command("CLIENT", "PAUSE", 300, "ALL")
    with ThreadPoolExecutor(max_workers=burst) as pool:
        states = list(pool.map(lambda _: registry.get(run_id), range(burst)))
    assert all(state is not None and state.identity.run_id == run_id for state in states)
    assert len(admin.client_list()) - clients_before <= POOL_CONNECTIONS  # the burst waited for the pool
    admin.close()


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
        assert start(registry).started
    registry.close()


def test_an_entry_whose_run_redis_evicted_is_absent(make_registry, redis_server):
    """Under Redis' own memory policy a run hash may go before its key: never a half entry."""
    registry = make_registry()
    run_id = create(registry)
    redis_server.client().delete(f"run-registry:run:{run_id}")
    assert registry.touch(key().digest) is None
    assert start(registry).started


@pytest.mark.parametrize(
    "damage",
    [
        lambda client, run: (client.delete(run), client.set(run, "a string where a run was")),
        lambda client, run: client.hdel(run, "bodyGzip", "eventsDigest"),
        lambda client, run: client.hset(run, "count", "many"),
        lambda client, run: (client.delete(run), client.rpush(run, "a", "list")),
        lambda client, run: client.hset(run, "status", "dancing"),
    ],
    ids=["string", "missing-fields", "unreadable-count", "list", "unknown-status"],
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
    assert start(registry).started  # stored over it


def test_prefixes_keep_registries_apart(redis_url):
    make = functools.partial(RedisRegistry, redis_url, TTL_MS, 10)
    staging, production = make(prefix="staging:"), make(prefix="production:")
    create(staging)
    assert production.touch(key().digest) is None and production.stats(top_scenarios=20).total_entries == 0
    staging.close()
    production.close()


def test_a_pooled_connection_says_whether_anything_is_unread_and_when_redis_closed_it(redis_server):
    pool = redis_pool(redis_server.url, timeout_ms=2000)
    connection = pool.get_connection()
    try:
        assert connection.can_read() is False  # idle: nothing unread
        connection.send_command("PING")
        wait_until(connection.can_read)  # the reply waits on the socket
        assert connection.read_response() == b"PONG" and connection.can_read() is False
        redis_server.client().execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        wait_until(lambda: unusable(connection))  # closed by Redis: the pool must not hand it out as it is
    finally:
        pool.release(connection)
    assert redis.Redis(connection_pool=pool).ping()  # the pool reconnected it at checkout
    pool.disconnect()


def unusable(connection) -> bool:
    """What the pool checks at checkout: something unread, or the server closed it."""
    try:
        return connection.can_read()
    except redis.ConnectionError:
        return True


def test_a_ledger_entry_that_is_not_one_is_treated_as_absent(make_registry, redis_server):
    registry = make_registry()
    create(registry)
    client = redis_server.client()
    entry = f"run-registry:ledger:{key().digest}"
    for field, value in (("r", "not a run id"), ("d", "short")):
        original = dict(zip((b"r", b"d"), client.hmget(entry, "r", "d"), strict=True))
        client.hset(entry, field, value)
        assert registry.ledger(key().digest) is None
        client.hset(entry, mapping=original)
    assert registry.ledger(key().digest) is not None
    client.delete(entry)
    client.set(entry, "a string where a hash should be")
    assert registry.ledger(key().digest) is None


def test_runs_of_one_millisecond_share_it_on_redis(make_registry):
    registry = make_registry()
    with freeze_time("2026-11-26 12:00:00"):
        run_ids = [registry.start(key(f"tie-{index}"), "fake", "1", "owner").run_id for index in range(4)]
    assert len({run_id.rsplit("_", 1)[1] for run_id in run_ids}) == 1  # what the paging contract test relies on


def test_the_listings_index_drops_runs_redis_expired_whether_or_not_anyone_lists(make_registry, redis_server):
    registry = make_registry(max_entries=2000)
    for index in range(300):
        create(registry, f"expiring-{index}")
    time.sleep(TTL_MS / 1000 + 0.1)  # Redis's own clock expires them
    live = [start(registry, key(f"live-{index}")).run_id for index in range(500)]
    index_size = redis_server.client().zcard("run-registry:runs")
    # Each start drops the gone ones of two members drawn at random: about 65 of the 300 are
    # expected left (the odds of 200 are nil); nothing listed them.
    assert len(live) <= index_size <= len(live) + 200
    assert {run.run_id for run in registry.runs(100, None).runs} <= set(live)
