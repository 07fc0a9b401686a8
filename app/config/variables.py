"""Reading the service's environment variables one by one: each reader takes a variable's text,
checks it, and refuses a bad one with one line naming the variable (``ConfigError``)."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
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
MAX_LOOKUP_WAIT_S = 25.0
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


def read_waiting_share(environ: Mapping[str, str]) -> int:
    """``RUN_REGISTRY_MAX_WAITING_PER_CLIENT``: by default an eighth of ``RUN_REGISTRY_MAX_WAITING``
    (100 of 800); given, less than it, or one client could hold every waiting connection."""
    total = positive_int(environ, "RUN_REGISTRY_MAX_WAITING", default=800)
    name = "RUN_REGISTRY_MAX_WAITING_PER_CLIENT"
    share = positive_int(environ, name, default=max(1, total // 8))
    if share >= total and total > 1:
        raise ConfigError(f"{name} ({share}) must be less than RUN_REGISTRY_MAX_WAITING ({total}): one client"
                          " must not be able to take every waiting connection")
    return share


def read_bind(environ: Mapping[str, str]) -> str:
    """``RUN_REGISTRY_BIND`` (``host:port``, ``[::1]:3001`` for IPv6); unset, ``0.0.0.0:$PORT`` when a
    Heroku-style host sets ``PORT``; neither, loopback. Set, it wins over ``PORT`` (which is then not
    read): the service's own variable says what its operator chose, ``PORT`` what a host offers."""
    name = "RUN_REGISTRY_BIND"
    raw = environ.get(name, "").strip()
    if not raw:
        port = bounded_int(environ, "PORT", 0, minimum=1, kind="a port from 1 to 65535", maximum=65535)
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
    return bounded_int(environ, name, default, minimum=1, kind="a positive integer")


def non_negative_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """Read a decimal integer of 0 or more, or the default when the variable is unset or empty."""
    return bounded_int(environ, name, default, minimum=0, kind="an integer of 0 or more")


def bounded_int(
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


def wait_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
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


def read_registry_url(environ: Mapping[str, str]) -> str:
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


def read_api_keys(environ: Mapping[str, str]) -> tuple[ApiKey, ...]:
    """``RUN_REGISTRY_API_KEYS``: no entry shown on error, only what is wrong with it (and its keyId)."""
    from app.access import KeyEntryError
    from app.access import parse_keys

    try:
        return parse_keys(environ.get("RUN_REGISTRY_API_KEYS", ""))
    except KeyEntryError as err:
        raise ConfigError(f"RUN_REGISTRY_API_KEYS: {err} (hashes are not shown)") from None


def read_anonymous_scopes(environ: Mapping[str, str]) -> frozenset[str]:
    name = "RUN_REGISTRY_ANONYMOUS"
    raw = environ.get(name, "").strip().lower() or "none"
    if raw not in ("none", "read"):
        raise ConfigError(f"{name} must be none or read, got {_shown(raw)}")
    return frozenset() if raw == "none" else frozenset({"read"})


def read_signing_key(environ: Mapping[str, str]) -> SigningKey | None:
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


def read_previous_public_keys(environ: Mapping[str, str]) -> tuple[PublicKey, ...]:
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


def read_execution(environ: Mapping[str, str]) -> str:
    name = "RUN_REGISTRY_EXECUTION"
    raw = environ.get(name, "").strip().lower() or "local"
    if raw not in ("local", "queue"):
        raise ConfigError(f"{name} must be local or queue, got {_shown(raw)}")
    return raw


def read_engine_spec(environ: Mapping[str, str]) -> str:
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


def read_engine_environment(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
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


def switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off", "true", "false", "1", "0"):
        raise ConfigError(f"{name} must be on or off, got {_shown(raw)}")
    return raw in ("on", "true", "1")


def non_empty(environ: Mapping[str, str], name: str) -> str | None:
    return environ.get(name, "").strip() or None


def _shown(raw: str) -> str:
    return repr(printable(raw, limit=60))
