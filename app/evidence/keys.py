"""Which key this process signs evidence with, and which public keys it lists (docs/operations.md,
"Signing keys").

The key is configured (``RUN_REGISTRY_SIGNING_KEY``), or, for the embedded registry alone, made
at start-up for the process's life. It is never kept in the registry: a signature is meant to
be independent of the store it vouches for, and whoever could read a key kept there could sign
forged packs, whoever could write it could swap it for the whole fleet. So a shared registry
needs a configured key (app/config.py refuses to start without one).
"""

from __future__ import annotations

import logging

from app.signing import PublicKey
from app.signing import SigningKey

log = logging.getLogger(__name__)


class EvidenceKeys:
    """The configured key, else one made for this process; and the retired keys listed after it."""

    def __init__(self, configured: SigningKey | None, previous: tuple[PublicKey, ...]) -> None:
        self._made = configured is None
        self._key = configured or SigningKey.generate()
        self._previous = previous

    def current(self) -> SigningKey:
        """The key to sign with."""
        return self._key

    def public_keys(self) -> list[PublicKey]:
        """The key in use first, then the retired ones whose packs must stay checkable."""
        current = self._key.public
        return [current, *(key for key in self._previous if key.key_id != current.key_id)]

    def announce(self) -> None:
        """Say at start-up which key signs: configured, or made for this process."""
        if self._made:
            log.info("run-registry: evidence is signed with a key made at start-up, not configured"
                     " (RUN_REGISTRY_SIGNING_KEY unset): it lasts as long as this process, keyId %s", self._key.key_id)
        else:
            log.info("run-registry: evidence is signed with the configured key (RUN_REGISTRY_SIGNING_KEY),"
                     " keyId %s", self._key.key_id)
