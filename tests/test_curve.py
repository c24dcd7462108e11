"""CURVE key files: generation, loading, the allow-list and the ZAP credentials hook."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from p2prec.io.curve import (
    AllowList,
    CurveAuthenticator,
    generate_node_keys,
    load_allowed,
    load_keypair,
    load_keyring,
    load_public_key,
    public_key_file,
    secret_key_file,
)


def test_generate_writes_a_private_secret_and_a_public_certificate(tmp_path: Path) -> None:
    curve = tmp_path / "keys" / "curve"  # created on demand
    public, secret = generate_node_keys(curve, "node-1")
    assert public == public_key_file(curve, "node-1") == curve / "node-1.key"
    assert secret == secret_key_file(curve, "node-1") == curve / "node-1.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pub, sec = load_keypair(secret)
    assert load_public_key(public) == pub
    assert len(pub) == len(sec) == 40
    assert zmq.curve_public(sec) == pub
    assert sorted(p.name for p in curve.iterdir()) == ["node-1.key", "node-1.key_secret"]


def test_generate_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    public, secret = generate_node_keys(tmp_path, "n1")
    before = load_keypair(secret)
    with pytest.raises(FileExistsError, match=r"n1\.key"):
        generate_node_keys(tmp_path, "n1")
    assert load_keypair(secret) == before
    generate_node_keys(tmp_path, "n1", force=True)
    assert load_keypair(secret) != before
    assert load_public_key(public) == load_keypair(secret)[0]


@pytest.mark.parametrize("name", ["", "../evil", "a/b", ".hidden", "x" * 65])
def test_bad_node_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        generate_node_keys(tmp_path, name)


def test_load_keypair_errors_name_the_file(tmp_path: Path) -> None:
    public, _secret = generate_node_keys(tmp_path, "n1")
    with pytest.raises(ValueError, match=r"n1\.key: no secret-key"):
        load_keypair(public)
    garbage = tmp_path / "junk.key_secret"
    garbage.write_bytes(b"\xff\xfe not a certificate")
    with pytest.raises(ValueError, match=r"junk\.key_secret"):
        load_keypair(garbage)
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    with pytest.raises(ValueError, match=r"short\.key_secret: public-key: not a 40-character"):
        load_keypair(short)
    with pytest.raises(FileNotFoundError, match=r"missing\.key_secret"):
        load_keypair(tmp_path / "missing.key_secret")


def test_allow_list_is_every_public_certificate(tmp_path: Path) -> None:
    keys = {name: load_public_key(generate_node_keys(tmp_path, name)[0]) for name in "cab"}
    (tmp_path / "README").write_text("not a key")
    assert load_keyring(tmp_path) == {n: keys[n] for n in "abc"}
    assert list(load_keyring(tmp_path)) == ["a", "b", "c"]
    assert load_allowed(tmp_path) == [keys["a"], keys["b"], keys["c"]]
    allow = AllowList.load(tmp_path)
    assert len(allow) == 3
    assert sorted(allow) == ["a", "b", "c"]
    assert allow.key_of("b") == keys["b"]
    assert allow.key_of("zz") is None
    assert allow.name_of(keys["c"]) == "c"
    assert keys["a"] in allow
    assert zmq.curve_keypair()[0] not in allow


def test_allow_list_errors_name_the_file(tmp_path: Path) -> None:
    generate_node_keys(tmp_path, "a")
    (tmp_path / "bad.key").write_text("# nothing here\n")
    with pytest.raises(ValueError, match=r"bad\.key"):
        load_allowed(tmp_path)
    (tmp_path / "bad.key").unlink()
    (tmp_path / "-x.key").write_bytes(public_key_file(tmp_path, "a").read_bytes())
    with pytest.raises(ValueError, match=r"-x\.key: file name is not a valid node id"):
        load_allowed(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_allowed(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="allow-list entry 'x'"):
        AllowList({"x": b"short"})


def test_authenticator_admits_listed_keys_and_names_them(tmp_path: Path) -> None:
    key_a = load_public_key(generate_node_keys(tmp_path, "a")[0])
    stranger = zmq.curve_keypair()[0]
    denied: list[bytes] = []
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        auth = CurveAuthenticator(ctx, AllowList.load(tmp_path), denied.append)
        assert auth.callback("*", key_a)
        assert not auth.callback("*", stranger)
        assert denied == [stranger]
        assert auth.curve_user_id(z85.decode(key_a)) == "a"
        assert auth.curve_user_id(z85.decode(stranger)) == stranger.decode()
    finally:
        ctx.term()
