"""The shared registry on Redis: one registry for every worker process and host.

Keys, under a prefix (``run-registry:`` by default):

- ``key:<cacheKey>``: the runId of the key's live run.
- ``run:<runId>``: a hash with the whole record (events included), its hits and expiresAt.
- ``claim:<cacheKey>``: held by the one caller in the fleet that is running the engine
  for that key; a random token, with an expiry so a dead holder never blocks the key.
- ``runid:<runId>``: a runId reserved for a run being built (the claim's token), so that no
  other caller, of any key or deploy, records a run under it meanwhile.
- ``lru``: a sorted set of ``<scenarioId> <cacheKey>`` scored by expiresAt. The TTL is
  the same for every entry and only a lookup renews it, so this is also LRU order:
  the lowest score is both the next to expire and the least recently used.
- ``scenario-entries``: a sorted set of scenarios scored by minus their entries, so the
  scenarios with most entries come first (ties by name) and stats read only the first few;
  ``counters``: evictions, expirations, hits, misses, engine runs.

A key under the prefix that is not what this module wrote there (another type, missing
fields) is treated as absent, never as a run, and logged once.

Redis expires ``key:`` and ``run:`` itself, at one instant set by ``PEXPIREAT`` in one
script. The sorted set and the counts are bookkeeping for the cap and for stats; a
slice of it is swept on each write, and all of it on ``stats()``.

Every change is one Lua script, so it happens whole or not at all. Scripts touch keys
they compute from the prefix, so this backend needs a single Redis (or a primary with
replicas), not Redis Cluster.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from contextlib import suppress
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.clock import now_ms
from app.logs import DefectLog
from app.models import LiveRun
from app.models import RegistryStats
from app.models import RunKey
from app.models import RunRecord
from app.registry.base import RegistryUnavailable
from app.registry.single_flight import SingleFlight

log = logging.getLogger(__name__)
SWEEP_SLICE = 64

# Shared by the scripts: Redis' clock, renewal on a hit, and the bookkeeping of the index.
_LUA_PRELUDE = """
local prefix = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function forget(member, counter)
  redis.call('ZREM', prefix .. 'lru', member)
  local scenario = string.match(member, '^(%S+) ')
  if tonumber(redis.call('ZINCRBY', prefix .. 'scenario-entries', 1, scenario)) >= 0 then
    redis.call('ZREM', prefix .. 'scenario-entries', scenario)
  end
  redis.call('HINCRBY', prefix .. 'counters', counter, 1)
end
-- A string key's value; false when absent or when something else sits there.
local function string_at(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' then return false end
  return value
end
local function sweep(now, limit)
  local expired = redis.call('ZRANGEBYSCORE', prefix .. 'lru', '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do forget(member, 'expirations') end
  return #expired
end
-- The runId (and scenario) of the key's entry if its run record is there and whole; false if
-- not: absent, evicted by Redis' own memory policy, or something this module did not write.
local function entry_run(cache_key)
  local entry = prefix .. 'key:' .. cache_key
  local run_id = string_at(entry)
  if not run_id then return false end
  local fields = redis.pcall('HMGET', prefix .. 'run:' .. run_id, 'scenarioId', 'cacheKey', 'count',
                             'eventsDigest', 'bodyGzip')
  if fields.err then return false end
  if not fields[1] then  -- the run hash is gone: so is the entry
    redis.call('DEL', entry)
    return false
  end
  if fields[2] ~= cache_key or not tonumber(fields[3]) or not fields[4] or not fields[5] then return false end
  return run_id, fields[1]
end
-- The key's live runId, renewed (both keys expire at one instant) and counted as a hit.
local function touch(cache_key, ttl)
  local run_id, scenario = entry_run(cache_key)
  if not run_id then return false end
  local entry, run = prefix .. 'key:' .. cache_key, prefix .. 'run:' .. run_id
  local expires = now_ms() + ttl
  redis.call('PEXPIREAT', entry, expires)
  redis.call('PEXPIREAT', run, expires)
  redis.call('HINCRBY', run, 'hits', 1)
  redis.call('HSET', run, 'expiresAt', expires)
  redis.call('ZADD', prefix .. 'lru', 'XX', expires, scenario .. ' ' .. cache_key)
  redis.call('HINCRBY', prefix .. 'counters', 'hits', 1)
  return run_id
end
"""

# ARGV: prefix, cacheKey, ttl_ms. Returns the runId after renewing, or nil.
_TOUCH = _LUA_PRELUDE + """
return touch(ARGV[2], tonumber(ARGV[3]))
"""

# ARGV: prefix, cacheKey, ttl_ms, token, claim_ms, runId prefix, now_ms.
# Returns {'live', runId} (renewed), {'claimed', runId} (a runId reserved for the run) or {'wait'}.
# The runId takes the first millisecond from now_ms that no run, of any key or deploy, holds or
# has reserved: the cache key alone would not tell two deploys' runs of one scenario apart.
_TOUCH_OR_CLAIM = _LUA_PRELUDE + """
local run_id = touch(ARGV[2], tonumber(ARGV[3]))
if run_id then return {'live', run_id} end
if not redis.call('SET', prefix .. 'claim:' .. ARGV[2], ARGV[4], 'NX', 'PX', ARGV[5]) then return {'wait'} end
local created_at = tonumber(ARGV[7])
local function taken(candidate)
  return redis.call('EXISTS', prefix .. 'run:' .. candidate, prefix .. 'runid:' .. candidate) > 0
end
while taken(ARGV[6] .. string.format('%d', created_at)) do created_at = created_at + 1 end
run_id = ARGV[6] .. string.format('%d', created_at)
redis.call('SET', prefix .. 'runid:' .. run_id, ARGV[4], 'PX', ARGV[5])
return {'claimed', run_id}
"""

# ARGV: prefix, cacheKey, token, ttl_ms, max_entries, runId, scenarioId, then the record's fields.
# Stores the run whole (unless another caller's run got there first), evicting as needed.
_COMMIT = _LUA_PRELUDE + """
local cache_key, token, ttl, max_entries = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local run_id, scenario = ARGV[6], ARGV[7]
local entry, claim = prefix .. 'key:' .. cache_key, prefix .. 'claim:' .. cache_key
if redis.call('GET', claim) == token then redis.call('DEL', claim) end
if redis.call('GET', prefix .. 'runid:' .. run_id) == token then redis.call('DEL', prefix .. 'runid:' .. run_id) end
local existing = entry_run(cache_key)
if existing then
  redis.call('HINCRBY', prefix .. 'counters', 'hits', 1)
  return {0, existing}  -- another caller's run got there first (our claim had lapsed): theirs stands
end
local now = now_ms()
sweep(now, 64)
local lru = prefix .. 'lru'
while redis.call('ZCARD', lru) >= max_entries do
  local oldest = redis.call('ZRANGE', lru, 0, 0)[1]
  local oldest_entry = prefix .. 'key:' .. string.match(oldest, ' (%S+)$')
  local oldest_run = string_at(oldest_entry)
  if oldest_run then redis.call('DEL', oldest_entry, prefix .. 'run:' .. oldest_run) end
  forget(oldest, 'evictions')
end
local expires = now + ttl
local run = prefix .. 'run:' .. run_id
redis.call('SET', entry, run_id, 'PXAT', expires)
redis.call('HSET', run, unpack(ARGV, 8))
redis.call('HSET', run, 'hits', 0, 'expiresAt', expires)
redis.call('PEXPIREAT', run, expires)
redis.call('ZADD', lru, expires, scenario .. ' ' .. cache_key)
redis.call('ZINCRBY', prefix .. 'scenario-entries', -1, scenario)
redis.call('HINCRBY', prefix .. 'counters', 'misses', 1)
return {1, run_id}
"""

# ARGV: prefix, cacheKey, runId, token[, claim_ms]. Extends (with claim_ms) or releases a claim we
# hold, and the runId reserved with it.
_EXTEND_OR_RELEASE = """
local held = 0
for _, key in ipairs({ARGV[1] .. 'claim:' .. ARGV[2], ARGV[1] .. 'runid:' .. ARGV[3]}) do
  if redis.call('GET', key) == ARGV[4] then
    held = 1
    if ARGV[5] then redis.call('PEXPIRE', key, ARGV[5]) else redis.call('DEL', key) end
  end
end
return held
"""

# ARGV: prefix, runId. Removes a run found damaged (and its entry, if it names the run), so the
# key's next lookup starts a new run.
_DISCARD = _LUA_PRELUDE + """
local run = prefix .. 'run:' .. ARGV[2]
local fields = redis.pcall('HMGET', run, 'scenarioId', 'cacheKey')
if fields.err or not fields[1] or not fields[2] then return 0 end
local entry = prefix .. 'key:' .. fields[2]
if string_at(entry) == ARGV[2] then redis.call('DEL', entry) end
redis.call('DEL', run)
if redis.call('ZSCORE', prefix .. 'lru', fields[1] .. ' ' .. fields[2]) then
  forget(fields[1] .. ' ' .. fields[2], 'discarded')
end
return 1
"""

# ARGV: prefix, duration_ms, failed (0 or 1).
_ENGINE_RUN = """
local counters = ARGV[1] .. 'counters'
redis.call('HINCRBY', counters, 'engine_runs', 1)
redis.call('HINCRBY', counters, 'engine_failures', ARGV[3])
redis.call('HINCRBYFLOAT', counters, 'engine_ms_total', ARGV[2])
"""

# ARGV: prefix, top_scenarios. Sweeps what expired (at most 10,000 entries a call; the writes
# sweep too), then reads the counts and the scenarios with the most entries.
_STATS = _LUA_PRELUDE + """
for _ = 1, 10 do if sweep(now_ms(), 1000) < 1000 then break end end
local scenarios = prefix .. 'scenario-entries'
local top = {}
if tonumber(ARGV[2]) > 0 then top = redis.call('ZRANGE', scenarios, 0, tonumber(ARGV[2]) - 1, 'WITHSCORES') end
return {redis.call('ZCARD', prefix .. 'lru'), top, redis.call('ZCARD', scenarios),
        redis.call('HGETALL', prefix .. 'counters')}
"""

_RECORD_FIELDS = ("runId", "cacheKey", "engineCodeHash", "engineName", "engineVersion", "count", "eventsDigest",
                  "bodyGzip", "hits", "expiresAt")


class RedisRegistry:
    """The registry contract on a Redis server shared by every process and host."""

    def __init__(
        self,
        url: str,
        ttl_ms: int,
        max_entries: int,
        timeout_ms: int = 500,
        prefix: str = "run-registry:",
        claim_ms: int = 10_000,
        wait_ms: int = 60_000,
    ) -> None:
        self.ttl_ms = ttl_ms
        self._max_entries = max_entries
        self._prefix = prefix
        self._claim_ms = claim_ms
        self._wait_ms = wait_ms
        self._client = redis.Redis.from_url(url, **redis_client_options(timeout_ms))
        self._defects = DefectLog(log)
        self._touch = self._client.register_script(_TOUCH)
        self._touch_or_claim = self._client.register_script(_TOUCH_OR_CLAIM)
        self._commit = self._client.register_script(_COMMIT)
        self._extend_or_release = self._client.register_script(_EXTEND_OR_RELEASE)
        self._stats = self._client.register_script(_STATS)
        self._engine_run = self._client.register_script(_ENGINE_RUN)
        self._discard = self._client.register_script(_DISCARD)
        # Threads of this process share one claim per key, and one result or exception.
        self._flights: SingleFlight[tuple[str, bool]] = SingleFlight()

    def touch(self, cache_key: str) -> str | None:
        with _unavailable_on_redis_errors():
            run_id = self._touch(args=[self._prefix, cache_key, self.ttl_ms])
        return run_id.decode() if run_id else None

    def create_once(self, key: RunKey, build: Callable[[str], RunRecord]) -> tuple[str, bool]:
        cache_key = key.digest
        (run_id, created), leader = self._flights.run(cache_key, lambda: self._create_in_fleet(key, build))
        if not leader:
            self.touch(cache_key)  # a caller that waited for another's build has a hit on that run
        return run_id, created and leader

    def get(self, run_id: str) -> LiveRun | None:
        key = f"{self._prefix}run:{run_id}"
        try:
            with _unavailable_on_redis_errors():
                values: list[Any] = self._client.hmget(key, _RECORD_FIELDS)
        except RegistryUnavailable as err:
            if isinstance(err.__cause__, redis.ResponseError) and str(err.__cause__).startswith("WRONGTYPE"):
                self._defects.report(key, "redis key %s is not a run record (another type); treated as absent", key)
                return None
            raise
        if all(value is None for value in values):
            return None
        try:
            fields = dict(zip(_RECORD_FIELDS, values, strict=True))
            record = RunRecord(
                run_id=fields["runId"].decode(),
                cache_key=fields["cacheKey"].decode(),
                engine_code_hash=fields["engineCodeHash"].decode(),
                engine_name=fields["engineName"].decode(),
                engine_version=fields["engineVersion"].decode(),
                event_count=int(fields["count"]),
                events_digest=bytes(fields["eventsDigest"]),
                body_gzip=bytes(fields["bodyGzip"]),
            )
            live = LiveRun(record, int(fields["expiresAt"]), int(fields["hits"]))
        except (AttributeError, TypeError, ValueError, UnicodeDecodeError):  # a field missing or not readable
            self._defects.report(key, "redis key %s is not a whole run record; treated as absent", key)
            return None
        if record.run_id != run_id:
            self._defects.report(key, "redis key %s holds the record of another run; treated as absent", key)
            return None
        return live

    def stats(self, top_scenarios: int) -> RegistryStats:
        with _unavailable_on_redis_errors():
            total, top, scenario_count, counters = self._stats(args=[self._prefix, top_scenarios])
        counts = {name.decode(): float(value) for name, value in _pairs(counters)}
        return RegistryStats(
            total_entries=int(total),
            entries_by_scenario={name.decode(): -int(float(score)) for name, score in _pairs(top)},
            scenario_count=int(scenario_count),
            evictions=int(counts.get("evictions", 0)),
            expirations=int(counts.get("expirations", 0)),
            hits=int(counts.get("hits", 0)),
            misses=int(counts.get("misses", 0)),
            engine_runs=int(counts.get("engine_runs", 0)),
            engine_failures=int(counts.get("engine_failures", 0)),
            engine_ms_total=counts.get("engine_ms_total", 0.0),
        )

    def discard(self, run_id: str) -> None:
        with _unavailable_on_redis_errors():
            self._discard(args=[self._prefix, run_id])

    def record_engine_run(self, duration_ms: float, failed: bool) -> None:
        with _unavailable_on_redis_errors():
            self._engine_run(args=[self._prefix, f"{duration_ms:.3f}", int(failed)])

    def ping(self) -> None:
        with _unavailable_on_redis_errors():
            self._client.ping()

    def close(self) -> None:
        self._client.close()

    def _create_in_fleet(self, key: RunKey, build: Callable[[str], RunRecord]) -> tuple[str, bool]:
        """Claim the key for this process, or wait for the process that holds it."""
        cache_key = key.digest
        token = secrets.token_hex(16)
        deadline = time.monotonic() + self._wait_ms / 1000
        pause = 0.002
        while True:
            with _unavailable_on_redis_errors():
                answer = self._touch_or_claim(args=[
                    self._prefix, cache_key, self.ttl_ms, token, self._claim_ms, key.run_id_prefix, now_ms(),
                ])
            if answer[0] == b"live":
                return answer[1].decode(), False
            if answer[0] == b"claimed":
                return self._build_and_commit(cache_key, answer[1].decode(), token, build)
            if time.monotonic() >= deadline:
                raise RegistryUnavailable(f"gave up after {self._wait_ms} ms waiting for another worker's run")
            time.sleep(pause)  # another process is running the engine for this key
            pause = min(pause * 2, 0.05)

    def _build_and_commit(
        self, cache_key: str, run_id: str, token: str, build: Callable[[str], RunRecord]
    ) -> tuple[str, bool]:
        with self._claim_kept_alive(cache_key, run_id, token):
            record = build(run_id)
        with _unavailable_on_redis_errors():
            stored, stored_run_id = self._commit(args=[
                self._prefix, cache_key, token, self.ttl_ms, self._max_entries, record.run_id, record.scenario_id,
                *_record_fields(record),
            ])
        return stored_run_id.decode(), bool(stored)

    @contextmanager
    def _claim_kept_alive(self, cache_key: str, run_id: str, token: str) -> Iterator[None]:
        """Extend the claim while the engine runs; release it if the run fails.

        If this process dies, nothing extends the claim and it expires, so another
        process takes the key over after at most ``claim_ms``.
        """
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(self._claim_ms / 3000):
                # A failed beat is retried by the next; if Redis stays away the claim lapses, as it should.
                with suppress(redis.RedisError):
                    self._extend_or_release(args=[self._prefix, cache_key, run_id, token, self._claim_ms])

        beater = threading.Thread(target=heartbeat, name=f"claim-{cache_key[:8]}", daemon=True)
        beater.start()
        try:
            yield
        except BaseException:
            done.set()
            with suppress(redis.RedisError):  # unreleased, the claim expires by itself
                self._extend_or_release(args=[self._prefix, cache_key, run_id, token])
            raise
        finally:
            done.set()
            beater.join()


def redis_client_options(timeout_ms: int) -> dict[str, Any]:
    """Options of every Redis client of the service (the registry's, the limits').

    Short timeouts and one immediate retry: the retry mends a pooled connection that a Redis
    restart closed; beyond that an outage is a prompt 503, not a hang.
    """
    return {
        "socket_timeout": timeout_ms / 1000,
        "socket_connect_timeout": timeout_ms / 1000,
        "retry": Retry(NoBackoff(), 1),
    }


@contextmanager
def _unavailable_on_redis_errors() -> Iterator[None]:
    try:
        yield
    except redis.RedisError as err:
        raise RegistryUnavailable(f"redis: {err.__class__.__name__}") from err


def _record_fields(record: RunRecord) -> list[Any]:
    return [
        "runId", record.run_id, "cacheKey", record.cache_key, "scenarioId", record.scenario_id,
        "engineCodeHash", record.engine_code_hash, "engineName", record.engine_name,
        "engineVersion", record.engine_version, "count", record.event_count,
        "eventsDigest", record.events_digest, "bodyGzip", record.body_gzip,
    ]


def _pairs(flat: list[bytes]) -> list[tuple[bytes, bytes]]:
    """HGETALL's flat [name, value, ...] as pairs."""
    return list(zip(flat[::2], flat[1::2], strict=True))
