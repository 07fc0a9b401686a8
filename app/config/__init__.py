"""Settings from environment variables, parsed and validated once at start-up (each variable
read by ``app.config.variables``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING

from app.config.variables import DEFAULT_BIND
from app.config.variables import DEFAULT_ENGINE
from app.config.variables import ENGINE_INHERITS
from app.config.variables import MAX_LOOKUP_WAIT_S
from app.config.variables import ConfigError
from app.config.variables import bounded_int
from app.config.variables import non_empty
from app.config.variables import non_negative_int
from app.config.variables import positive_int
from app.config.variables import positive_number
from app.config.variables import read_anonymous_scopes
from app.config.variables import read_api_keys
from app.config.variables import read_bind
from app.config.variables import read_engine_environment
from app.config.variables import read_engine_spec
from app.config.variables import read_execution
from app.config.variables import read_previous_public_keys
from app.config.variables import read_registry_url
from app.config.variables import read_signing_key
from app.config.variables import read_waiting_share
from app.config.variables import registry_url_for_display
from app.config.variables import switch
from app.config.variables import wait_seconds

if TYPE_CHECKING:
    from app.access import ApiKey
    from app.signing import PublicKey
    from app.signing import SigningKey

# Named here for the modules that import them from app.config: what they are is read there.
__all__ = ["DEFAULT_ENGINE", "ENGINE_INHERITS", "MAX_LOOKUP_WAIT_S", "ConfigError", "Settings", "load_settings",
           "positive_int", "registry_url_for_display"]

MAX_TTL_MINUTES = 10 * 365 * 24 * 60  # ten years: beyond that a typo is likelier than intent
COMMIT_VARIABLES = ("ENGINE_COMMIT_SHA", "SOURCE_VERSION", "HEROKU_SLUG_COMMIT")
# Engine executions one client may cause a minute; the README says why this many.
DEFAULT_NEW_RUNS_PER_MINUTE = 30
# How long a lookup (or a read of a run) waits for a run that is not done: the README says why.
DEFAULT_LOOKUP_WAIT_S = 20.0
MAX_BODY_BYTES = 64 * 1024  # the largest request body taken (the contract's 413 past it)


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
        registry_url=read_registry_url(environ),
        engine=read_engine_spec(environ),
        engine_environment=read_engine_environment(environ),
        engine_root=non_empty(environ, "RUN_REGISTRY_ENGINE_ROOT"),
        engine_token=non_empty(environ, "RUN_REGISTRY_ENGINE_TOKEN"),
        engine_describe_s=positive_number(environ, "RUN_REGISTRY_ENGINE_DESCRIBE_S", 60.0, "seconds", 86_400),
        scenarios_path=non_empty(environ, "RUN_REGISTRY_SCENARIOS"),
        engine_code_hash=non_empty(environ, "ENGINE_CODE_HASH"),
        engine_timeout_s=positive_number(environ, "RUN_REGISTRY_ENGINE_TIMEOUT_S", 600.0, "seconds", 24 * 3600),
        engine_threads=positive_int(environ, "RUN_REGISTRY_ENGINE_THREADS", default=8),
        engine_queue=non_negative_int(environ, "RUN_REGISTRY_ENGINE_QUEUE", default=32),
        engine_event_delay_ms=bounded_int(
            environ, "RUN_REGISTRY_ENGINE_EVENT_DELAY_MS", 0, minimum=0, kind="milliseconds from 0 to 60000",
            maximum=60_000,
        ),
        lookup_wait_s=wait_seconds(environ, "RUN_REGISTRY_LOOKUP_WAIT_S", DEFAULT_LOOKUP_WAIT_S),
        keepalive_s=positive_number(environ, "RUN_REGISTRY_KEEPALIVE_S", 15.0, "seconds", 300),
        max_waiting=positive_int(environ, "RUN_REGISTRY_MAX_WAITING", default=800),
        max_waiting_per_client=read_waiting_share(environ),
        client_timeout_s=positive_number(environ, "RUN_REGISTRY_CLIENT_TIMEOUT_S", 10.0, "seconds", 300),
        transcript_cache_mb=positive_int(environ, "RUN_REGISTRY_TRANSCRIPT_CACHE_MB", default=32),
        ledger_days=positive_number(environ, "RUN_REGISTRY_LEDGER_DAYS", 30.0, "days", 3650),
        ledger_max_keys=positive_int(environ, "RUN_REGISTRY_LEDGER_MAX_KEYS", default=100_000),
        api_keys=read_api_keys(environ),
        anonymous_scopes=read_anonymous_scopes(environ),
        signing_key=read_signing_key(environ),
        previous_public_keys=read_previous_public_keys(environ),
        execution=read_execution(environ),
        queue_wait_s=positive_number(environ, "RUN_REGISTRY_QUEUE_WAIT_S", 60.0, "seconds", 3600),
        lease_s=positive_number(environ, "RUN_REGISTRY_LEASE_S", 10.0, "seconds", 50),
        queue_max=positive_int(environ, "RUN_REGISTRY_QUEUE_MAX", default=1000),
        new_runs_per_minute=non_negative_int(
            environ, "RUN_REGISTRY_NEW_RUNS_PER_MINUTE", default=DEFAULT_NEW_RUNS_PER_MINUTE
        ),
        redis_timeout_ms=positive_int(environ, "RUN_REGISTRY_REDIS_TIMEOUT_MS", default=500),
        redis_prefix=non_empty(environ, "RUN_REGISTRY_REDIS_PREFIX") or "run-registry:",
        trusted_proxies=non_negative_int(environ, "RUN_REGISTRY_TRUSTED_PROXIES", default=0),
        access_log=switch(environ, "RUN_REGISTRY_ACCESS_LOG", default=True),
        metrics_dir=non_empty(environ, "PROMETHEUS_MULTIPROC_DIR"),
        bind=read_bind(environ),
        engine_commit=next(
            (value for name in COMMIT_VARIABLES if (value := non_empty(environ, name))), None
        ),
    )


