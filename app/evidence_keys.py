"""Which key this process signs evidence with, and which public keys it lists (docs/operations.md,
"Signing keys")."""

from __future__ import annotations

import logging
import threading
import time

from app.config import ConfigError
from app.registry.base import Registry
from app.registry.base import RegistryUnavailable
from app.signing import KeyMaterialError
from app.signing import PublicKey
from app.signing import SigningKey

log = logging.getLogger(__name__)
# How often a process that signs with the registry's key asks whether it is still the one kept
# there: a Redis that lost its data (restarted without persistence) keeps none, the next process
# to ask would make another, and the fleet would sign alike no more. Asked again on a pack's
# first making, at most this often, so that after such a loss the fleet agrees again within it.
RECHECK_S = 60.0


class SigningKeyDamaged(Exception):
    """The registry keeps something that is not a signing key where the fleet's key should be."""


class EvidenceKeys:
    """The configured key, else the fleet's: made by whichever process asked first and kept by the
    registry (Redis: every process of the fleet signs alike; memory: this process's own, for its life)."""

    def __init__(self, registry: Registry, configured: SigningKey | None, previous: tuple[PublicKey, ...]) -> None:
        self._registry = registry
        self._configured = configured
        self._previous = previous
        self._lock = threading.Lock()
        self._kept: SigningKey | None = None
        self._checked_at = 0.0

    def current(self) -> SigningKey:
        """The key to sign with: the configured one, else the registry's, asked again at most every
        RECHECK_S (one registry call a minute for a process's requests of signed evidence).

        :raises RegistryUnavailable: the registry does not answer, and no key was known yet.
        :raises SigningKeyDamaged: the registry keeps something else where the key should be.
        """
        if self._configured is not None:
            return self._configured
        with self._lock:
            if self._kept is None or time.monotonic() - self._checked_at >= RECHECK_S:
                self._kept = self._ask_registry(self._kept)
                self._checked_at = time.monotonic()
            return self._kept

    def _ask_registry(self, known: SigningKey | None) -> SigningKey:
        candidate = known or SigningKey.generate()
        try:
            kept_pem = self._registry.signing_key(candidate.pem())
        except RegistryUnavailable:
            if known is None:
                raise
            return known  # a registry that is down changes no key: asked again in a minute
        return candidate if kept_pem == candidate.pem() else _parsed(kept_pem)

    def public_keys(self) -> list[PublicKey]:
        """The key in use first, then the retired ones whose packs must stay checkable."""
        current = self.current().public
        return [current, *(key for key in self._previous if key.key_id != current.key_id)]

    def announce(self, shared: bool) -> None:
        """Say at start-up which key signs: configured, or made (and, shared, kept in the registry).

        :raises ConfigError: the registry keeps something else where the key should be.
        """
        if self._configured is not None:
            log.info("run-registry: evidence is signed with the configured key (RUN_REGISTRY_SIGNING_KEY),"
                     " keyId %s", self._configured.key_id)
            return
        try:
            key = self.current()
        except RegistryUnavailable:
            log.warning("run-registry: RUN_REGISTRY_SIGNING_KEY is unset and the registry does not answer: the"
                        " fleet's signing key is read (or made and kept) at the first pack")
            return
        except SigningKeyDamaged as err:
            raise ConfigError(
                f"{err}; remove it (the next process makes a key) or set RUN_REGISTRY_SIGNING_KEY"
            ) from None
        if shared:
            log.info("run-registry: evidence is signed with a key made, not configured (RUN_REGISTRY_SIGNING_KEY"
                     " unset), kept in the registry for every process of the fleet: keyId %s", key.key_id)
        else:
            log.info("run-registry: evidence is signed with a key made at start-up, not configured"
                     " (RUN_REGISTRY_SIGNING_KEY unset): it lasts as long as this process, keyId %s", key.key_id)


def _parsed(pem: bytes) -> SigningKey:
    try:
        return SigningKey.from_pem(pem)
    except KeyMaterialError as err:
        raise SigningKeyDamaged(f"the registry's signing-key entry {err}") from None
