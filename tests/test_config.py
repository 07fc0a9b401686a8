"""Settings: defaults, parsing, and one clear line naming the variable for every bad value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.config import DEFAULT_ENGINE
from app.config import ConfigError
from app.config import Settings
from app.config import load_settings
from app.config import registry_url_for_display
from app.signing import SigningKey
from harness.servers import ROOT

FLEET_KEY = {"RUN_REGISTRY_SIGNING_KEY": SigningKey.generate().pem().decode()}  # a Redis registry needs one


def test_defaults():
    assert load_settings({}) == Settings()
    assert Settings().ttl_ms == 3_600_000 and Settings().max_entries == 10_000
    assert Settings().registry_url == "memory://" and Settings().engine == DEFAULT_ENGINE


def test_values_are_parsed():
    settings = load_settings({
        "RUN_REGISTRY_TTL_MIN": "0.05",
        "RUN_REGISTRY_MAX_ENTRIES": "5",
        "RUN_REGISTRY_URL": "memory://",
        "RUN_REGISTRY_ENGINE": "harness.fakes:FakeEngine",
        "ENGINE_CODE_HASH": "abc",
    })
    assert (settings.ttl_minutes, settings.ttl_ms, settings.max_entries) == (0.05, 3000, 5)
    assert (settings.engine, settings.engine_code_hash) == ("harness.fakes:FakeEngine", "abc")


def test_empty_variables_mean_the_default():
    assert load_settings({"RUN_REGISTRY_TTL_MIN": "", "RUN_REGISTRY_MAX_ENTRIES": " "}) == Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUN_REGISTRY_TTL_MIN", "0"),
        ("RUN_REGISTRY_TTL_MIN", "-1"),
        ("RUN_REGISTRY_TTL_MIN", "abc"),
        ("RUN_REGISTRY_TTL_MIN", "nan"),
        ("RUN_REGISTRY_TTL_MIN", "inf"),
        ("RUN_REGISTRY_TTL_MIN", "1e30"),
        ("RUN_REGISTRY_MAX_ENTRIES", "0"),
        ("RUN_REGISTRY_MAX_ENTRIES", "-5"),
        ("RUN_REGISTRY_MAX_ENTRIES", "1.5"),
        ("RUN_REGISTRY_MAX_ENTRIES", "ten"),
        ("RUN_REGISTRY_URL", "postgres://db"),
        ("RUN_REGISTRY_ENGINE", "no-colon"),
        ("RUN_REGISTRY_ENGINE", "a:b\nc"),
        ("RUN_REGISTRY_TRUSTED_PROXIES", "-1"),
        ("RUN_REGISTRY_MAX_WAITING", "0"),
        ("RUN_REGISTRY_MAX_WAITING_PER_CLIENT", "0"),
        ("RUN_REGISTRY_CLIENT_TIMEOUT_S", "0"),
        ("RUN_REGISTRY_CLIENT_TIMEOUT_S", "301"),
        ("RUN_REGISTRY_TRANSCRIPT_CACHE_MB", "0"),
        ("RUN_REGISTRY_LEDGER_DAYS", "0"),
        ("RUN_REGISTRY_LEDGER_DAYS", "3651"),
        ("RUN_REGISTRY_LEDGER_MAX_KEYS", "0"),
        ("RUN_REGISTRY_LEDGER_MAX_KEYS", "many"),
        ("RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
        ("RUN_REGISTRY_LOOKUP_WAIT_S", "26"),
        ("RUN_REGISTRY_LOOKUP_WAIT_S", "-1"),
        ("RUN_REGISTRY_ENGINE_EVENT_DELAY_MS", "60001"),
        ("RUN_REGISTRY_KEEPALIVE_S", "0"),
        ("RUN_REGISTRY_REDIS_TIMEOUT_MS", "0"),
        ("RUN_REGISTRY_ACCESS_LOG", "maybe"),
    ],
)
def test_invalid_setting_is_one_line_naming_the_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        load_settings({name: value})
    message = str(raised.value)
    assert message.startswith(name) and "\n" not in message


def test_first_commit_variable_wins():
    environ = {"SOURCE_VERSION": "source", "HEROKU_SLUG_COMMIT": "slug"}
    assert load_settings(environ).engine_commit == "source"
    assert load_settings({**environ, "ENGINE_COMMIT_SHA": "commit"}).engine_commit == "commit"
    assert load_settings({"HEROKU_SLUG_COMMIT": "slug"}).engine_commit == "slug"


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "redis://localhost", "rediss://:secret@cache.internal:6380/2", "memory://"]
)
def test_registry_urls_accepted(url):
    settings = load_settings({"RUN_REGISTRY_URL": url, **FLEET_KEY})
    assert settings.registry_url == url and settings.shared_registry == (url != "memory://")


@pytest.mark.parametrize(
    "url", ["redis://", "redis://host:port/0", "redis://host/db", "http://host", "memcached://h", "memory"]
)
def test_registry_urls_refused(url):
    with pytest.raises(ConfigError, match=r"^RUN_REGISTRY_URL must be memory:// or redis://"):
        load_settings({"RUN_REGISTRY_URL": url})


@pytest.mark.parametrize(
    "url",
    ["redis://:hunter2@host:notaport/0", "redis://:hun/ter2@host:6379/0", "redis://host:6379/x?password=hunter2",
     "redis://:hunter2@/0", "http://:hunter2@host/0"],
    ids=["bad-port", "raw-slash", "bad-db-with-query-password", "no-host", "other-scheme"],
)
def test_a_refused_registry_url_echoes_no_part_of_it(url):
    with pytest.raises(ConfigError) as raised:
        load_settings({"RUN_REGISTRY_URL": url})
    message = str(raised.value)
    assert message.startswith("RUN_REGISTRY_URL must be memory:// or redis://")
    assert not any(part in message for part in ("hun", "ter2", "host:"))


@pytest.mark.parametrize(
    ("url", "shown"),
    [("redis://:hunter2@cache.internal:6380/2", "redis://cache.internal:6380/2"),
     ("redis://cache.internal/0?password=hunter2", "redis://cache.internal:6379/0"),
     ("rediss://default:hunter2@cache.internal:25061?db=3", "rediss://cache.internal:25061/3"),
     ("redis://:s%2Fecret%40hunter2@cache.internal:6379/0", "redis://cache.internal:6379/0"),
     ("redis://user:hun@ter2@cache.internal/0", "redis://cache.internal:6379/0")],
    ids=["user-info", "query-password", "user-and-query-db", "escaped", "raw-at"],
)
def test_the_registry_url_is_shown_without_any_form_of_its_password(url, shown):
    assert registry_url_for_display(load_settings({"RUN_REGISTRY_URL": url, **FLEET_KEY}).registry_url) == shown


def test_a_redis_add_on_url_is_taken_when_the_service_has_none_of_its_own():
    added = {"REDIS_URL": "redis://addon.example:6379/0", **FLEET_KEY}
    assert load_settings(added).registry_url == "redis://addon.example:6379/0"
    both = {**added, "RUN_REGISTRY_URL": "redis://own.example:6379/1"}
    assert load_settings(both).registry_url == "redis://own.example:6379/1"
    with pytest.raises(ConfigError, match=r"^REDIS_URL must be redis://"):
        load_settings({"REDIS_URL": "memcached://addon.example"})


def test_a_fleet_refuses_to_start_without_a_configured_signing_key_and_says_how_to_make_one():
    with pytest.raises(ConfigError) as refused:
        load_settings({"RUN_REGISTRY_URL": "redis://127.0.0.1:6379/0"})
    assert str(refused.value) == (
        "RUN_REGISTRY_SIGNING_KEY is required with a Redis registry: every process of a fleet signs with the one"
        " key, and it is never kept in the registry; make one with `run-registry new-signing-key signing-key.pem`"
        " and set RUN_REGISTRY_SIGNING_KEY=signing-key.pem (or the file's text)")
    assert load_settings({}).signing_key is None  # the embedded registry makes one for its process


def test_queue_execution_needs_a_shared_registry():
    queued = {"RUN_REGISTRY_EXECUTION": "queue", "REDIS_URL": "redis://h:6379/0", **FLEET_KEY}
    assert load_settings(queued).execution == "queue"
    with pytest.raises(ConfigError, match="RUN_REGISTRY_EXECUTION=queue needs a Redis registry"):
        load_settings({"RUN_REGISTRY_EXECUTION": "queue"})
    with pytest.raises(ConfigError, match="RUN_REGISTRY_EXECUTION must be local or queue"):
        load_settings({"RUN_REGISTRY_EXECUTION": "celery"})


def test_a_worker_without_redis_refuses_to_start_with_one_line():
    environ = {key: value for key, value in os.environ.items() if key not in ("RUN_REGISTRY_URL", "REDIS_URL")}
    result = subprocess.run([sys.executable, "-m", "app.worker"], env={**environ, "RUN_REGISTRY_URL": "memory://"},
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr == ("run-registry worker: refusing to start: RUN_REGISTRY_URL (or REDIS_URL) must name a"
                             " Redis: workers share the web's registry\n")


def test_the_waiting_share_is_an_eighth_of_the_room_by_default_and_never_all_of_it():
    assert load_settings({}).max_waiting_per_client == 100
    assert load_settings({"RUN_REGISTRY_MAX_WAITING": "100"}).max_waiting_per_client == 12
    assert load_settings({"RUN_REGISTRY_MAX_WAITING": "4"}).max_waiting_per_client == 1
    for share in ("100", "150"):
        with pytest.raises(ConfigError, match=r"^RUN_REGISTRY_MAX_WAITING_PER_CLIENT \(\d+\) must be less than"):
            load_settings({"RUN_REGISTRY_MAX_WAITING": "100", "RUN_REGISTRY_MAX_WAITING_PER_CLIENT": share})


@pytest.mark.parametrize(
    ("environ", "bind"),
    [({}, "127.0.0.1:3001"),
     ({"PORT": "5000"}, "0.0.0.0:5000"),
     ({"RUN_REGISTRY_BIND": "127.0.0.1:4000"}, "127.0.0.1:4000"),
     ({"RUN_REGISTRY_BIND": " [::1]:3001 "}, "[::1]:3001"),
     ({"RUN_REGISTRY_BIND": "[::]:8080"}, "[::]:8080"),
     ({"RUN_REGISTRY_BIND": "0.0.0.0:80"}, "0.0.0.0:80"),
     ({"RUN_REGISTRY_BIND": "localhost:3001"}, "localhost:3001"),
     ({"RUN_REGISTRY_BIND": "registry.internal:65535"}, "registry.internal:65535"),
     ({"RUN_REGISTRY_BIND": "127.0.0.1:4000", "PORT": "5000"}, "127.0.0.1:4000"),
     ({"RUN_REGISTRY_BIND": "127.0.0.1:4000", "PORT": "not read"}, "127.0.0.1:4000"),
     ({"RUN_REGISTRY_BIND": "", "PORT": ""}, "127.0.0.1:3001")],
    ids=["default", "port", "bind", "ipv6-loopback", "ipv6-any", "any", "name", "dns-name", "bind-wins-over-port",
         "port-unread", "empty"],
)
def test_the_bind_address_is_run_registry_bind_else_port_on_every_interface_else_loopback(environ, bind):
    assert load_settings(environ).bind == bind


@pytest.mark.parametrize(
    "value",
    ["3001", "localhost", "127.0.0.1:", ":3001", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:30x1", "::1:3001",
     "[::1]", "[localhost]:3001", "[127.0.0.1]:3001", "256.1.1.1:3001", "http://127.0.0.1:3001", "unix:/tmp/rr.sock",
     "a b:3001", "127.0.0.1:3001,0.0.0.0:3002", "-host:80"],
)
def test_a_bad_bind_address_is_one_line_naming_the_variable(value):
    with pytest.raises(ConfigError) as refused:
        load_settings({"RUN_REGISTRY_BIND": value})
    assert str(refused.value) == (
        "RUN_REGISTRY_BIND must be host:port, such as 127.0.0.1:3001, 0.0.0.0:8080 or [::1]:3001 (an IPv6 address in"
        f" brackets), with a port from 1 to 65535, got {value!r}")


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1", "5000.5"])
def test_a_bad_port_is_one_line_naming_it(value):
    with pytest.raises(ConfigError, match=rf"^PORT must be a port from 1 to 65535, got '{value}'$"):
        load_settings({"PORT": value})
