"""Ed25519 keys: generation, signatures, key files."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from p2prec.wire.signing import SIGNATURE_BYTES, Signer, Verifier, save_public_key

DIGEST = bytes(range(32))


def test_sign_verify() -> None:
    signer = Signer.generate()
    signature = signer.sign(DIGEST)
    assert len(signature) == SIGNATURE_BYTES
    verifier = Verifier(signer.public_key_bytes)
    assert verifier.verify(DIGEST, signature)
    assert signer.verifier().verify(DIGEST, signature)


def test_bad_signatures_are_false_not_errors() -> None:
    signer = Signer.generate()
    signature = signer.sign(DIGEST)
    verifier = signer.verifier()
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verifier.verify(DIGEST, flipped)
    assert not verifier.verify(DIGEST[::-1], signature)
    assert not verifier.verify(DIGEST, b"")
    assert not verifier.verify(DIGEST, signature[:-1])
    assert not verifier.verify(DIGEST, signature + b"\0")
    assert not verifier.verify(DIGEST, bytes(SIGNATURE_BYTES))
    assert not Signer.generate().verifier().verify(DIGEST, signature)


def test_from_bytes_is_deterministic() -> None:
    signer = Signer.generate()
    again = Signer.from_bytes(signer.private_bytes())
    assert again.public_key_bytes == signer.public_key_bytes
    assert again.sign(DIGEST) == signer.sign(DIGEST)  # Ed25519 signatures are deterministic


def test_wrong_key_lengths() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Signer.from_bytes(b"\1" * 31)
    with pytest.raises(ValueError, match="32 bytes"):
        Verifier(b"\1" * 33)


def test_save_load_private(tmp_path: Path) -> None:
    signer = Signer.generate()
    path = tmp_path / "a" / "b" / "trainer.key"
    signer.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Signer.load(path).public_key_bytes == signer.public_key_bytes
    signer.save(path)  # overwrite keeps the mode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_save_load_public(tmp_path: Path) -> None:
    signer = Signer.generate()
    signer.save_public(tmp_path / "pub" / "trainer.pub")
    verifier = Verifier.load(tmp_path / "pub" / "trainer.pub")
    assert verifier.public_key_bytes == signer.public_key_bytes
    save_public_key(tmp_path / "other.pub", signer.public_key_bytes)
    assert Verifier.load(tmp_path / "other.pub").verify(DIGEST, signer.sign(DIGEST))


def test_raw_key_files(tmp_path: Path) -> None:
    signer = Signer.generate()
    (tmp_path / "raw.key").write_bytes(signer.private_bytes())
    (tmp_path / "raw.pub").write_bytes(signer.public_key_bytes)
    assert Signer.load(tmp_path / "raw.key").public_key_bytes == signer.public_key_bytes
    assert Verifier.load(tmp_path / "raw.pub").public_key_bytes == signer.public_key_bytes


def test_bad_key_files_name_the_path(tmp_path: Path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"not a key at all")
    with pytest.raises(ValueError, match=r"junk\.key"):
        Signer.load(junk)
    with pytest.raises(ValueError, match=r"junk\.key"):
        Verifier.load(junk)
    public = tmp_path / "trainer.pub"
    Signer.generate().save_public(public)
    with pytest.raises(ValueError, match=r"trainer\.pub"):
        Signer.load(public)  # a public key where a private key belongs
    private = tmp_path / "trainer.key"
    Signer.generate().save(private)
    with pytest.raises(ValueError, match=r"trainer\.key"):
        Verifier.load(private)
    with pytest.raises(FileNotFoundError):
        Signer.load(tmp_path / "missing.key")
