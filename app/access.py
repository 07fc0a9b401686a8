"""Who is calling and what they may do: API keys with scopes (docs/operations.md, "Keys and scopes").

``RUN_REGISTRY_API_KEYS`` lists keys as ``<keyId>:<sha256 of the secret>:<scopes>``; the service
never holds a secret. A request's ``Authorization: Bearer <secret>`` is hashed once and compared,
in constant time, with every key's hash. The caller that results (its keyId, its scopes, its
client's network) is what the service is given: the door checks a route's scope, and the service
checks ``run`` where it knows a run would start (a lookup that misses), which no route can know.

Written here rather than with Flask-HTTPAuth: its ``login_required(role=...)`` decides per route
before the view, all or nothing, and a lookup's scope depends on the registry; what is left, a
header, a hash and a comparison, is a dozen lines (costed in bench/overhead.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from dataclasses import field
from typing import NamedTuple

from app.errors import CrossSiteRequest
from app.errors import Forbidden
from app.errors import Unauthorized

SCOPES = ("read", "run", "ops")
ALL_SCOPES = frozenset(SCOPES)
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class KeyEntryError(ValueError):
    """An entry of RUN_REGISTRY_API_KEYS is malformed; the message never shows its hash."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes = field(repr=False)  # SHA-256 of the secret: never shown, not even in a repr
    scopes: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entry: str) -> ApiKey:
        """One entry, ``<keyId>:<sha256 hex>:<scope>+<scope>...``.

        :raises KeyEntryError: it is malformed (the message shows the keyId, never the hash).
        """
        parts = entry.strip().split(":")
        if len(parts) != 3 or not KEY_ID.fullmatch(parts[0]):
            raise KeyEntryError("an entry is not <keyId>:<sha256 of the secret>:<scopes>, with a keyId of 1-64"
                                " characters of A-Z a-z 0-9 . _ -")
        key_id, digest, scopes = parts
        if not _SHA256_HEX.fullmatch(digest):
            raise KeyEntryError(f"key {key_id}: the hash must be the SHA-256 of the secret, 64 lower-case hex digits")
        return cls(key_id, bytes.fromhex(digest), parse_scopes(scopes, f"key {key_id}"))


def parse_scopes(text: str, what: str) -> frozenset[str]:
    """``read+run`` as a set of scopes.

    :raises KeyEntryError: an unknown or repeated scope, or none.
    """
    scopes = text.split("+")
    if not text or any(scope not in SCOPES for scope in scopes):
        raise KeyEntryError(f"{what}: scopes must be one or more of {', '.join(SCOPES)} joined by +")
    repeated = next((scope for scope in SCOPES if scopes.count(scope) > 1), None)
    if repeated is not None:
        raise KeyEntryError(f"{what}: scope {repeated} is given twice (each of {', '.join(SCOPES)} once at most)")
    return frozenset(scopes)


def parse_keys(value: str) -> tuple[ApiKey, ...]:
    """A comma-separated list of entries; keyIds and hashes are each used once.

    :raises KeyEntryError: an entry is malformed, or a keyId or a hash is given twice.
    """
    keys = tuple(ApiKey.parse(entry) for entry in value.split(",") if entry.strip())
    key_ids = [key.key_id for key in keys]
    if len(set(key_ids)) != len(key_ids):
        raise KeyEntryError("a keyId is given twice")
    if len({key.digest for key in keys}) != len(keys):
        raise KeyEntryError("two keys have the same hash (one secret for two keys)")
    return keys


SECRET_PREFIX = "rr_"


def new_key(key_id: str, scopes: str) -> tuple[str, str]:
    """A new secret and its ``RUN_REGISTRY_API_KEYS`` entry.

    :raises KeyEntryError: the keyId or the scopes are not valid.
    """
    if not KEY_ID.fullmatch(key_id):
        raise KeyEntryError("a keyId is 1-64 characters of A-Z a-z 0-9 . _ -")
    parse_scopes(scopes, f"key {key_id}")
    # 256 bits. The prefix: a secret never starts with "-" (1 in 64 of bare URL-safe tokens did, and
    # `run-registry --key <secret>` then took it for an option), and secret scanners can find it.
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    return secret, f"{key_id}:{hashlib.sha256(secret.encode()).hexdigest()}:{scopes}"


class Caller(NamedTuple):
    """Who a request is: its key (``None`` without one), what it may do, and its client's network.

    A named tuple: one is made for every request with a key, and a frozen dataclass takes
    several times as long to make.
    """

    key_id: str | None
    scopes: frozenset[str]
    client: str
    # A browser said the request comes from a page of another site, or from a navigation no person
    # made (Fetch Metadata): it may read, never start engine work (docs/operations.md).
    foreign: bool = False

    @property
    def limit_key(self) -> str:
        """Whose budget of new runs a request spends: its key's, or its client's without one."""
        return self.client if self.key_id is None else f"key:{self.key_id}"

    def require(self, *scopes: str) -> None:
        """:raises Unauthorized: a request without a key may not (it needs one).
        :raises Forbidden: its key lacks one of ``scopes``."""
        missing = [scope for scope in scopes if scope not in self.scopes]
        if not missing:
            if self.foreign and "run" in scopes:
                raise CrossSiteRequest("A request from another site's page, or a navigation no one made, may not"
                                       " start runs: start it from this service's own page, or call the API directly")
            return
        if self.key_id is None:
            raise Unauthorized(f"This needs a key with the {'+'.join(scopes)} scope:"
                               " send Authorization: Bearer <secret>")
        raise Forbidden(f"Key {self.key_id} lacks the {'+'.join(missing)} scope this needs")


class Access:
    """The configured keys, and who a request's ``Authorization`` header makes it."""

    def __init__(self, keys: tuple[ApiKey, ...], anonymous: frozenset[str]) -> None:
        self.keys = keys
        self._anonymous = anonymous

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def caller(self, authorization: str | None, client: str) -> Caller:
        """The caller a request with this ``Authorization`` header (or none) is.

        :raises Unauthorized: a header that is no bearer key, or a secret no key has; or no
            header where clients without a key may do nothing.
        """
        if not self.keys:
            return open_caller(client)
        if authorization is None:
            if self._anonymous:
                return Caller(None, self._anonymous, client)
            raise Unauthorized("This service needs a key: send Authorization: Bearer <secret>")
        if authorization[:7] == "Bearer ":  # as every client sends it
            secret = authorization[7:].strip()
        else:
            scheme, _, secret = authorization.strip().partition(" ")
            secret = secret.strip() if scheme.lower() == "bearer" else ""
        if not secret:
            raise Unauthorized("Send the key as Authorization: Bearer <secret>")
        digest = hashlib.sha256(secret.encode("latin-1")).digest()  # WSGI's header strings are latin-1
        found = None
        for key in self.keys:  # every key compared, whichever matches: the time says nothing
            if hmac.compare_digest(key.digest, digest):
                found = key
        if found is None:
            raise Unauthorized("No key has this secret")
        return Caller(found.key_id, found.scopes, client)


@functools.lru_cache(maxsize=4096)
def open_caller(client: str, foreign: bool = False) -> Caller:
    """The caller of a service without keys: its client, with every scope (one per client, kept)."""
    return Caller(None, ALL_SCOPES, client, foreign)


def foreign_request(site: str | None, mode: str | None, user: str | None) -> bool:
    """Whether Fetch Metadata (``Sec-Fetch-Site``, ``-Mode``, ``-User``) says a browser sends this for a
    page of another site (``cross-site``, or ``same-site``: another origin of the same domain), or
    navigates this page by a script's will rather than a person's (same-origin, no user action).
    A request without them (curl, the CLI, an old browser) is its sender's own."""
    if site is None or site == "none":  # not a browser's; or typed, a bookmark
        return False
    if site != "same-origin":
        return True
    return mode == "navigate" and user != "?1"
