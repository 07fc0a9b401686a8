"""Settings from environment variables, parsed and validated once at start-up."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import unquote
from urllib.parse import urlparse

from app.text import printable

if TYPE_CHECKING:
    from app.access import ApiKey
    from app.signing import PublicKey
    from app.signing import SigningKey

DEFAULT_ENGINE = "app.engine.pricing:PricingEngine"
MAX_TTL_MINUTES = 10 * 365 * 24 * 60  # ten years: beyond that a typo is likelier than intent
COMMIT_VARIABLES = ("ENGINE_COMMIT_SHA", "SOURCE_VERSION", "HEROKU_SLUG_COMMIT")
# Engine executions one client may cause a minute; the README says why this many.
DEFAULT_NEW_RUNS_PER_MINUTE = 30
# How long a lookup (or a read of a run) waits for a run that is not done: the README says why.
DEFAULT_LOOKUP_WAIT_S = 20.0
MAX_LOOKUP_WAIT_S = 25.0
MAX_BODY_BYTES = 64 * 1024  # the largest request body taken (the contract's 413 past it)
# Where gunicorn listens without RUN_REGISTRY_BIND or PORT: this host alone reaches it.
DEFAULT_BIND = "127.0.0.1:3001"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")  # a DNS name, or localhost
_PYTHON_ENGINE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# What an engine's process may see of the service's environment, besides RUN_REGISTRY_ENGINE_ENV.
ENGINE_INHERITS = ("PATH", "HOME", "LANG")


class ConfigError(Exception):
    """A setting is invalid; the message names the variable and is one line."""


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    ttl_minutes: float = 60.0
    max_entries: int = 10_000
    registry_url: str = "memory://"
    engine: str = DEFAULT_ENGINE
    # A process engine's environment: PATH, HOME, LANG and the variables RUN_REGISTRY_ENGINE_ENV names.
    engine_environment: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    engine_root: str | None = None  # a process engine's files, for its identity
    engine_token: str | None = field(default=None, repr=False)  # an HTTP or LLM engine's bearer token
    engine_describe_s: float = 60.0  # how often a remote engine is described again
    scenarios_path: str | None = None  # an LLM engine's scenarios (RUN_REGISTRY_SCENARIOS)
    engine_code_hash: str | None = None
    engine_commit: str | None = None
    engine_timeout_s: float = 600.0
    engine_threads: int = 8
    engine_queue: int = 32
    engine_event_delay_ms: int = 0
    new_runs_per_minute: int = DEFAULT_NEW_RUNS_PER_MINUTE
    lookup_wait_s: float = DEFAULT_LOOKUP_WAIT_S
    keepalive_s: float = 15.0
    max_waiting: int = 800
    max_waiting_per_client: int = 100
    client_timeout_s: float = 10.0
    transcript_cache_mb: int = 32
    ledger_days: float = 30.0  # a key's determinism reference is kept this long after its last check
    ledger_max_keys: int = 100_000
    api_keys: tuple[ApiKey, ...] = ()  # none: the service is open (docs/operations.md)
    anonymous_scopes: frozenset[str] = frozenset()  # what a request without a key may do, with keys
    signing_key: SigningKey | None = None  # none: made at start-up (the embedded registry only)
    previous_public_keys: tuple[PublicKey, ...] = ()  # listed after the current key, for older packs
    execution: str = "local"  # "local": the web process runs the engine; "queue": workers do
    queue_wait_s: float = 60.0
    lease_s: float = 10.0
    queue_max: int = 1000
    redis_timeout_ms: int = 500
    redis_prefix: str = "run-registry:"
    trusted_proxies: int = 0
    access_log: bool = True
    metrics_dir: str | None = None  # PROMETHEUS_MULTIPROC_DIR: gunicorn.conf.py sets it
    bind: str = DEFAULT_BIND  # host:port gunicorn listens on (RUN_REGISTRY_BIND, else 0.0.0.0:$PORT)

    @property
    def shared_registry(self) -> bool:
        """Whether the registry lives outside this process, so several workers may share it."""
        return not self.registry_url.startswith("memory:")

    @property
    def ledger_ms(self) -> int:
        """The ledger's time in whole milliseconds, at least one."""
        return max(1, round(self.ledger_days * 86_400_000))

    @property
    def ttl_ms(self) -> int:
        """The TTL in whole milliseconds, at least one."""
        return max(1, round(self.ttl_minutes * 60_000))


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse the service's variables; raise ConfigError naming the first bad one."""
    settings = _read_settings(environ)
    if settings.execution == "queue" and not settings.shared_registry:
        raise ConfigError("RUN_REGISTRY_EXECUTION=queue needs a Redis registry (RUN_REGISTRY_URL or REDIS_URL):"
                          " workers and web processes share it")
    if settings.shared_registry and settings.signing_key is None:
        raise ConfigError("RUN_REGISTRY_SIGNING_KEY is required with a Redis registry: every process of a fleet"
                          " signs with the one key, and it is never kept in the registry; make one with"
                          " `run-registry new-signing-key signing-key.pem` and set"
                          " RUN_REGISTRY_SIGNING_KEY=signing-key.pem (or the file's text)")
    return settings


def _read_settings(environ: Mapping[str, str]) -> Settings:
    return Settings(
        ttl_minutes=positive_number(environ, "RUN_REGISTRY_TTL_MIN", 60.0, "minutes", MAX_TTL_MINUTES),
        max_entries=positive_int(environ, "RUN_REGISTRY_MAX_ENTRIES", default=10_000),
        registry_url=_registry_url(environ),
        engine=_engine_spec(environ),
        engine_environment=_engine_environment(environ),
        engine_root=_non_empty(environ, "RUN_REGISTRY_ENGINE_ROOT"),
        engine_token=_non_empty(environ, "RUN_REGISTRY_ENGINE_TOKEN"),
        engine_describe_s=positive_number(environ, "RUN_REGISTRY_ENGINE_DESCRIBE_S", 60.0, "seconds", 86_400),
        scenarios_path=_non_empty(environ, "RUN_REGISTRY_SCENARIOS"),
        engine_code_hash=_non_empty(environ, "ENGINE_CODE_HASH"),
        engine_timeout_s=positive_number(environ, "RUN_REGISTRY_ENGINE_TIMEOUT_S", 600.0, "seconds", 24 * 3600),
        engine_threads=positive_int(environ, "RUN_REGISTRY_ENGINE_THREADS", default=8),
        engine_queue=non_negative_int(environ, "RUN_REGISTRY_ENGINE_QUEUE", default=32),
        engine_event_delay_ms=_bounded_int(
            environ, "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS", 0, minimum=0, kind="milliseconds from 0 to 60000",
            maximum=60_000,
        ),
        lookup_wait_s=_wait_seconds(environ, "RUN_REGISTRY_LOOKUP_WAIT_S", DEFAULT_LOOKUP_WAIT_S),
        keepalive_s=positive_number(environ, "RUN_REGISTRY_KEEPALIVE_S", 15.0, "seconds", 300),
        max_waiting=positive_int(environ, "RUN_REGISTRY_MAX_WAITING", default=800),
        max_waiting_per_client=_waiting_share(environ),
        client_timeout_s=positive_number(environ, "RUN_REGISTRY_CLIENT_TIMEOUT_S", 10.0, "seconds", 300),
        transcript_cache_mb=positive_int(environ, "RUN_REGISTRY_TRANSCRIPT_CACHE_MB", default=32),
        ledger_days=positive_number(environ, "RUN_REGISTRY_LEDGER_DAYS", 30.0, "days", 3650),
        ledger_max_keys=positive_int(environ, "RUN_REGISTRY_LEDGER_MAX_KEYS", default=100_000),
        api_keys=_api_keys(environ),
        anonymous_scopes=_anonymous_scopes(environ),
        signing_key=_signing_key(environ),
        previous_public_keys=_previous_public_keys(environ),
        execution=_execution(environ),
        queue_wait_s=positive_number(environ, "RUN_REGISTRY_QUEUE_WAIT_S", 60.0, "seconds", 3600),
        lease_s=positive_number(environ, "RUN_REGISTRY_LEASE_S", 10.0, "seconds", 50),
        queue_max=positive_int(environ, "RUN_REGISTRY_QUEUE_MAX", default=1000),
        new_runs_per_minute=non_negative_int(
            environ, "RUN_REGISTRY_NEW_RUNS_PER_MINUTE", default=DEFAULT_NEW_RUNS_PER_MINUTE
        ),
        redis_timeout_ms=positive_int(environ, "RUN_REGISTRY_REDIS_TIMEOUT_MS", default=500),
        redis_prefix=_non_empty(environ, "RUN_REGISTRY_REDIS_PREFIX") or "run-registry:",
        trusted_proxies=non_negative_int(environ, "RUN_REGISTRY_TRUSTED_PROXIES", default=0),
        access_log=_switch(environ, "RUN_REGISTRY_ACCESS_LOG", default=True),
        metrics_dir=_non_empty(environ, "PROMETHEUS_MULTIPROC_DIR"),
        bind=_bind(environ),
        engine_commit=next(
            (value for name in COMMIT_VARIABLES if (value := _non_empty(environ, name))), None
        ),
    )


def _waiting_share(environ: Mapping[str, str]) -> int:
    """``RUN_REGISTRY_MAX_WAITING_PER_CLIENT``: by default an eighth of ``RUN_REGISTRY_MAX_WAITING``
    (100 of 800); given, less than it, or one client could hold every waiting connection."""
    total = positive_int(environ, "RUN_REGISTRY_MAX_WAITING", default=800)
    name = "RUN_REGISTRY_MAX_WAITING_PER_CLIENT"
    share = positive_int(environ, name, default=max(1, total // 8))
    if share >= total and total > 1:
        raise ConfigError(f"{name} ({share}) must be less than RUN_REGISTRY_MAX_WAITING ({total}): one client"
                          " must not be able to take every waiting connection")
    return share


def _bind(environ: Mapping[str, str]) -> str:
    """``RUN_REGISTRY_BIND`` (``host:port``, ``[::1]:3001`` for IPv6); unset, ``0.0.0.0:$PORT`` when a
    Heroku-style host sets ``PORT``; neither, loopback. Set, it wins over ``PORT`` (which is then not
    read): the service's own variable says what its operator chose, ``PORT`` what a host offers."""
    name = "RUN_REGISTRY_BIND"
    raw = environ.get(name, "").strip()
    if not raw:
        port = _bounded_int(environ, "PORT", 0, minimum=1, kind="a port from 1 to 65535", maximum=65535)
        return f"0.0.0.0:{port}" if port else DEFAULT_BIND
    host, _, port_text = raw.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        try:
            valid_host = ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            valid_host = False
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
            valid_host = True
        except ValueError:
            valid_host = False
    else:
        valid_host = bool(_HOST_NAME.fullmatch(host))
    if not valid_host or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{name} must be host:port, such as 127.0.0.1:3001, 0.0.0.0:8080 or [::1]:3001 (an IPv6"
                          f" address in brackets), with a port from 1 to 65535, got {_shown(raw)}")
    return f"{host}:{int(port_text)}"


def positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """Read a positive decimal integer, or the default when the variable is unset or empty."""
    return _bounded_int(environ, name, default, minimum=1, kind="a positive integer")


def non_negative_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """Read a decimal integer of 0 or more, or the default when the variable is unset or empty."""
    return _bounded_int(environ, name, default, minimum=0, kind="an integer of 0 or more")


def _bounded_int(
    environ: Mapping[str, str], name: str, default: int, minimum: int, kind: str, maximum: int = 999_999_999
) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not minimum <= int(raw) <= maximum:
        raise ConfigError(f"{name} must be {kind}, got {_shown(raw)}")
    return int(raw)


def _float_or_nan(raw: str) -> float:
    """``float(raw)``, or nan, which every bounds check refuses."""
    try:
        return float(raw)
    except ValueError:
        return math.nan


def _wait_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """Seconds from 0 to MAX_LOOKUP_WAIT_S: under the 30 s a Heroku-style router waits for an answer."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    seconds = _float_or_nan(raw)
    if not 0 <= seconds <= MAX_LOOKUP_WAIT_S:  # also refuses nan
        raise ConfigError(f"{name} must be a number of seconds from 0 to {MAX_LOOKUP_WAIT_S:g}, got {_shown(raw)}")
    return seconds


def positive_number(environ: Mapping[str, str], name: str, default: float, unit: str, maximum: float) -> float:
    """Read a positive decimal number up to ``maximum``, or the default when unset or empty."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    number = _float_or_nan(raw)
    if not (0 < number <= maximum):  # also refuses nan and inf
        shown_maximum = f"{maximum:.0f}" if maximum == int(maximum) else f"{maximum:g}"
        raise ConfigError(f"{name} must be a positive number of {unit} up to {shown_maximum}, got {_shown(raw)}")
    return number


def _registry_url(environ: Mapping[str, str]) -> str:
    """``RUN_REGISTRY_URL``; unset, the ``REDIS_URL`` a Redis add-on of a Heroku-style host sets;
    neither, the in-memory registry."""
    name = "RUN_REGISTRY_URL"
    raw = environ.get(name, "").strip()
    if not raw and environ.get("REDIS_URL", "").strip():
        name, raw = "REDIS_URL", environ["REDIS_URL"].strip()
    raw = raw or "memory://"
    if raw == "memory://":
        return raw
    if _redis_url_parts(raw) is None:
        # Not echoed, not even in part: a malformed URL may hold a password anywhere in it.
        raise ConfigError(
            f"{name} must be {'memory:// or ' if name == 'RUN_REGISTRY_URL' else ''}"
            "redis://[[user]:password@]host[:port][/db] (or rediss://);"
            " the value given is not (not shown: it may hold a password)"
        )
    return raw


def registry_url_for_display(url: str) -> str:
    """The registry's address without any form of credential: scheme, host, port and db only.

    redis-py takes a password from the user-info part or from a ``password`` query parameter,
    so the URL is rebuilt from its parsed parts rather than redacted.
    """
    parts = _redis_url_parts(url)
    if parts is None:
        return url if url == "memory://" else "(an invalid URL)"
    scheme, options = parts
    return f"{scheme}://{options['host']}:{options['port']}/{options['db']}"


def _redis_url_parts(url: str) -> tuple[str, dict[str, Any]] | None:
    """The scheme, host, port and db of a redis:// or rediss:// URL as redis-py reads it (its
    ``parse_url``: the same urllib parsing, a ``db`` query parameter before the path), or None
    if it is not one. Done here rather than by importing redis-py: gunicorn's master reads the
    settings, and redis-py would import ssl there before the gevent worker patches it."""
    scheme = url.partition("://")[0]
    if scheme not in ("redis", "rediss"):
        return None
    try:
        parts = urlparse(url)
        port = parts.port or 6379
        query = {name: values[0] for name, values in parse_qs(parts.query).items() if values}
        db_text = query.get("db") or unquote(parts.path).replace("/", "") or "0"
    except ValueError:
        return None
    host = unquote(parts.hostname or "")
    if not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host) or not re.fullmatch(r"[0-9]{1,9}", db_text):
        return None
    if not re.fullmatch(r"/?[0-9]*", parts.path):
        return None
    return scheme, {"host": host, "port": port, "db": int(db_text)}


def _api_keys(environ: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """``RUN_REGISTRY_API_KEYS``: no entry shown on error, only what is wrong with it (and its keyId)."""
    from app.access import KeyEntryError
    from app.access import parse_keys

    try:
        return parse_keys(environ.get("RUN_REGISTRY_API_KEYS", ""))
    except KeyEntryError as err:
        raise ConfigError(f"RUN_REGISTRY_API_KEYS: {err} (hashes are not shown)") from None


def _anonymous_scopes(environ: Mapping[str, str]) -> frozenset[str]:
    name = "RUN_REGISTRY_ANONYMOUS"
    raw = environ.get(name, "").strip().lower() or "none"
    if raw not in ("none", "read"):
        raise ConfigError(f"{name} must be none or read, got {_shown(raw)}")
    return frozenset() if raw == "none" else frozenset({"read"})


def _signing_key(environ: Mapping[str, str]) -> SigningKey | None:
    """``RUN_REGISTRY_SIGNING_KEY``: PKCS#8 PEM, as text or a file's path; nothing of it is echoed."""
    from app.signing import KeyMaterialError
    from app.signing import SigningKey
    from app.signing import pem_text_or_file

    name = "RUN_REGISTRY_SIGNING_KEY"
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return SigningKey.from_pem(pem_text_or_file(raw))
    except KeyMaterialError as err:
        raise ConfigError(f"{name} must be an Ed25519 private key in PKCS#8 PEM, as its text or the path of a"
                          f" file holding it; the value given {err} (not shown)") from None


def _previous_public_keys(environ: Mapping[str, str]) -> tuple[PublicKey, ...]:
    """``RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS``: public keys of retired signing keys, PEM as text or a file's path."""
    from app.signing import KeyMaterialError
    from app.signing import pem_text_or_file
    from app.signing import public_keys_from_pem

    name = "RUN_REGISTRY_PREVIOUS_PUBLIC_KEYS"
    raw = environ.get(name, "").strip()
    if not raw:
        return ()
    try:
        return tuple(public_keys_from_pem(pem_text_or_file(raw)))
    except KeyMaterialError as err:
        raise ConfigError(f"{name} must be Ed25519 public keys in PEM, as their text or the path of a file"
                          f" holding them; the value given {err}") from None


def _execution(environ: Mapping[str, str]) -> str:
    name = "RUN_REGISTRY_EXECUTION"
    raw = environ.get(name, "").strip().lower() or "local"
    if raw not in ("local", "queue"):
        raise ConfigError(f"{name} must be local or queue, got {_shown(raw)}")
    return raw


def _engine_spec(environ: Mapping[str, str]) -> str:
    """``RUN_REGISTRY_ENGINE``: ``module:attribute``, ``command:<command line>``, ``http(s)://...``,
    ``openai:http(s)://...``."""
    name = "RUN_REGISTRY_ENGINE"
    raw = environ.get(name, "").strip() or DEFAULT_ENGINE
    if raw.startswith("openai:"):
        base = raw.removeprefix("openai:")
        problem = _engine_url_problem(base) if base.startswith(("http://", "https://")) else "is not an http(s) URL"
        if problem:
            raise ConfigError(f"{name}=openai:<base URL>: the base URL {problem}, got {_shown(raw)}")
        return raw
    if raw.startswith("command:"):
        if not raw.removeprefix("command:").strip():
            raise ConfigError(f"{name}=command: needs a command line, such as command:node engine.js")
        return raw
    if raw.startswith(("http://", "https://")):
        problem = _engine_url_problem(raw)
        if problem:
            raise ConfigError(f"{name} {problem}, got {_shown(raw)}")
        return raw
    if not _PYTHON_ENGINE.fullmatch(raw):
        raise ConfigError(f"{name} must be package.module:attribute, command:<command line>, an http(s):// URL or"
                          f" openai:<base URL>, got {_shown(raw)}")
    return raw


def _engine_url_problem(url: str) -> str | None:
    """What is wrong with an engine's base URL, if anything (credentials go in RUN_REGISTRY_ENGINE_TOKEN)."""
    try:
        parts = urlparse(url)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        return "is not a URL"
    if not parts.hostname:
        return "names no host"
    if parts.username is not None or parts.password is not None:
        return "must not hold credentials (give them as RUN_REGISTRY_ENGINE_TOKEN)"
    if parts.fragment or printable(url, 2048) != url:
        return "must be a plain URL (no fragment, no control characters)"
    return None


def _engine_environment(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``PATH``, ``HOME``, ``LANG`` and what ``RUN_REGISTRY_ENGINE_ENV`` names (comma-separated):
    never one of the service's own variables, which hold its keys, its signing key, its backend's URL."""
    name = "RUN_REGISTRY_ENGINE_ENV"
    names = [part.strip() for part in environ.get(name, "").split(",") if part.strip()]
    for variable in names:
        if not _VARIABLE_NAME.fullmatch(variable):
            raise ConfigError(f"{name} must be variable names, comma-separated; {_shown(variable)} is not one")
        if variable.startswith("RUN_REGISTRY_") or variable in ("REDIS_URL", "ENGINE_CODE_HASH"):
            raise ConfigError(f"{name} may not name {variable}: an engine never sees the service's settings or"
                              " secrets")
    return tuple((variable, environ[variable]) for variable in dict.fromkeys((*ENGINE_INHERITS, *names))
                 if variable in environ)


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off", "true", "false", "1", "0"):
        raise ConfigError(f"{name} must be on or off, got {_shown(raw)}")
    return raw in ("on", "true", "1")


def _non_empty(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name, "").strip() or None


def _shown(raw: str) -> str:
    return repr(printable(raw, limit=60))
