"""Ed25519 keys of the trainer (pyca/cryptography).

The codec signs a BLAKE3 digest of the frames (see ``codec.frames_digest``); this module only
holds keys and signs or verifies 32-byte digests.

Key files are PEM (PKCS#8 private, SubjectPublicKeyInfo public) as written by ``save`` and
``save_public``; loading also accepts a file holding the raw 32 key bytes. A key file that cannot
be read as a key raises ``ValueError`` naming the path: it is configuration, not peer input.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

KEY_BYTES = 32
SIGNATURE_BYTES = 64

StrPath = str | os.PathLike[str]

_RAW = serialization.Encoding.Raw
_PEM = serialization.Encoding.PEM


class Signer:
    """The trainer's private key."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._public = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Signer:
        """From the raw 32-byte private key (seed)."""
        if len(raw) != KEY_BYTES:
            raise ValueError(f"an Ed25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    @classmethod
    def load(cls, path: StrPath) -> Signer:
        data = Path(path).read_bytes()
        try:
            if len(data) == KEY_BYTES:
                return cls.from_bytes(data)
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{os.fspath(path)}: not an Ed25519 private key ({exc})") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{os.fspath(path)}: not an Ed25519 private key")
        return cls(key)

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key (seed)."""
        return self._key.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def save(self, path: StrPath) -> None:
        """Write the private key as PEM, mode 0600, creating parent directories (mode 0700)."""
        pem = self._key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomic(Path(path), pem, 0o600)

    def save_public(self, path: StrPath) -> None:
        """Write the public key as PEM (what verifiers load)."""
        save_public_key(path, self._public)

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._public

    def verifier(self) -> Verifier:
        return Verifier(self._public)

    def sign(self, digest: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``digest``."""
        return self._key.sign(bytes(digest))


class Verifier:
    """A trusted public key (the trainer's)."""

    __slots__ = ("_key", "_raw")

    def __init__(self, public_raw: bytes) -> None:
        if len(public_raw) != KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {KEY_BYTES} bytes, got {len(public_raw)}")
        self._raw = bytes(public_raw)
        self._key = Ed25519PublicKey.from_public_bytes(self._raw)

    @classmethod
    def load(cls, path: StrPath) -> Verifier:
        data = Path(path).read_bytes()
        try:
            if len(data) == KEY_BYTES:
                return cls(data)
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{os.fspath(path)}: not an Ed25519 public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{os.fspath(path)}: not an Ed25519 public key")
        return cls(key.public_bytes(_RAW, serialization.PublicFormat.Raw))

    @property
    def public_key_bytes(self) -> bytes:
        return self._raw

    def verify(self, digest: bytes, signature: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``digest``; never raises for bad
        signatures (wrong length or content gives False)."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(bytes(signature), bytes(digest))
        except InvalidSignature:
            return False
        return True


def save_public_key(path: StrPath, public_raw: bytes) -> None:
    """Write a raw 32-byte public key as PEM, mode 0644, creating parent directories."""
    pem = Verifier(public_raw)._key.public_bytes(
        _PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomic(Path(path), pem, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file created with ``mode`` and renamed over ``path``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
