"""The service's Ed25519 signing key, and public keys as ``GET /signing-keys`` lists them.

Imports nothing of the service but ``cryptography``: ``run-registry verify-pack`` uses it offline.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from dataclasses import field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PEM_BEGIN = "-----BEGIN "
# A PEM file holds a key of a few hundred bytes; a longer "path" or file is not one.
MAX_PEM_BYTES = 64 * 1024


class KeyMaterialError(ValueError):
    """Not an Ed25519 key of the kind asked for; the message shows no key material."""


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, named by its keyId: the hex SHA-256 of its DER SubjectPublicKeyInfo."""

    key: Ed25519PublicKey = field(compare=False)  # equal keys are those of equal keyIds
    key_id: str
    pem: str

    @classmethod
    def of(cls, key: Ed25519PublicKey) -> PublicKey:
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(key, hashlib.sha256(der).hexdigest(), pem.decode("ascii"))


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key and its public half. Its repr names the keyId, never the key."""

    private: Ed25519PrivateKey = field(compare=False)
    public: PublicKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls.of(Ed25519PrivateKey.generate())

    @classmethod
    def of(cls, private: Ed25519PrivateKey) -> SigningKey:
        return cls(private, PublicKey.of(private.public_key()))

    @classmethod
    def from_pem(cls, pem: bytes) -> SigningKey:
        """:raises KeyMaterialError: ``pem`` is not an unencrypted PKCS#8 PEM Ed25519 private key."""
        if b"-----BEGIN PRIVATE KEY-----" not in pem:  # PKCS#8; "BEGIN ENCRYPTED PRIVATE KEY" needs a password
            raise KeyMaterialError("is not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)")
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise KeyMaterialError("is not a readable PKCS#8 PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyMaterialError(f"is a {type(private).__name__.removeprefix('_').replace('PrivateKey', '')} key,"
                            " not an Ed25519 one")
        return cls.of(private)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def pem(self) -> bytes:
        """The private key as PKCS#8 PEM: for the registry that keeps the fleet's key."""
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(keyId={self.key_id})"


def public_keys_from_pem(pem: bytes) -> list[PublicKey]:
    """Every Ed25519 public key (SubjectPublicKeyInfo PEM) in ``pem``, in order.

    :raises KeyMaterialError: a block is not one, or there is none.
    """
    marker = b"-----BEGIN PUBLIC KEY-----"
    blocks = [marker + block for block in pem.split(marker)[1:]]
    if not blocks:
        raise KeyMaterialError("holds no PEM public key (-----BEGIN PUBLIC KEY-----)")
    keys = []
    for number, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyMaterialError(f"public key {number} is not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyMaterialError(f"public key {number} is not an Ed25519 key")
        keys.append(PublicKey.of(key))
    return keys


def pem_text_or_file(raw: str) -> bytes:
    """A setting that holds PEM either as its text or as the path of a file holding it.

    :raises KeyMaterialError: it is neither (the file is missing, unreadable or too large).
    """
    if PEM_BEGIN in raw:
        return raw.replace("\\n", "\n").encode()  # one-line forms (Heroku config, .env) write "\n"
    if len(raw) > 4096 or "\x00" in raw:
        raise KeyMaterialError("is neither PEM text nor the path of a file")
    try:
        with open(os.path.expanduser(raw), "rb") as file:
            pem = file.read(MAX_PEM_BYTES + 1)
    except OSError as err:
        raise KeyMaterialError(f"is neither PEM text nor a readable file ({err.strerror})") from None
    if len(pem) > MAX_PEM_BYTES:
        raise KeyMaterialError(f"names a file of more than {MAX_PEM_BYTES} bytes, not a PEM key")
    return pem
