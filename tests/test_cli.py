"""The ``p2prec`` command: version, config show/check, keygen; errors exit 2 with one line."""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from p2prec import __version__
from p2prec.cli import main
from p2prec.config import build_config, load_config
from p2prec.log import reset_logging

CONF = Path(__file__).resolve().parent.parent / "conf"

Capture = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()  # keygen configures logging for the process


def assert_one_error_line(capsys: Capture, text: str) -> None:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("p2prec: error: ")
    assert text in lines[0]
    assert "Traceback" not in captured.err


def test_version(capsys: Capture) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"p2prec {__version__} ")


def test_no_command_is_a_usage_error(capsys: Capture) -> None:
    assert main([]) == 2
    assert "usage: p2prec" in capsys.readouterr().err


def test_help_exits_zero(capsys: Capture) -> None:
    assert main(["--help"]) == 0
    assert "keygen" in capsys.readouterr().out


# --- config show ----------------------------------------------------------------------------


def test_config_show_prints_commented_toml(capsys: Capture) -> None:
    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("#")
    assert "# Seconds between gossip rounds" in text
    assert build_config(tomllib.loads(text)) == load_config()


def test_config_show_file_preset_and_overrides(capsys: Capture) -> None:
    argv = ["config", "show", "--config", str(CONF / "wan.toml"), "--set", "mesh.port=7001"]
    assert main([*argv, "--set", "node.id=x-1", "--set", 'mesh.seeds=["h@h:1"]']) == 0
    config = build_config(tomllib.loads(capsys.readouterr().out))
    assert config.preset == "wan"
    assert (config.mesh.port, config.node.id, config.mesh.seeds) == (7001, "x-1", ("h@h:1",))


def test_config_show_json(capsys: Capture) -> None:
    assert main(["config", "show", "--config", "local", "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["preset"] == "local"
    assert data == load_config("local").to_dict()


def test_config_show_bad_config(capsys: Capture) -> None:
    assert main(["config", "show", "--set", "mesh.gossip_interval_s=-1"]) == 2
    assert_one_error_line(capsys, "mesh.gossip_interval_s: expected a number > 0")


def test_config_show_bad_set_syntax(capsys: Capture) -> None:
    assert main(["config", "show", "--set", "mesh.port"]) == 2
    assert_one_error_line(capsys, "expected KEY=VALUE")


# --- config check ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["local.toml", "lan.toml", "wan.toml"])
def test_config_check_ok(capsys: Capture, name: str) -> None:
    assert main(["config", "check", str(CONF / name)]) == 0
    assert capsys.readouterr().out == "ok\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store]\nrow_shards = 0\n", "store.row_shards: expected an integer in 1..65536"),
        ("[mesh]\nbogus = 1\n", "mesh.bogus: unknown key"),
        ("[mesh\n", "TOML syntax error"),
    ],
)
def test_config_check_bad(tmp_path: Path, capsys: Capture, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 2
    assert_one_error_line(capsys, message)


def test_config_check_missing_file(tmp_path: Path, capsys: Capture) -> None:
    assert main(["config", "check", str(tmp_path / "absent.toml")]) == 2
    assert_one_error_line(capsys, "no such config file")


# --- keygen ---------------------------------------------------------------------------------


def keygen_argv(tmp_path: Path) -> list[str]:
    keys = tmp_path / "keys"
    return [
        "keygen",
        "--set",
        f'keys.trainer_signing_key="{keys / "t.key"}"',
        "--set",
        f'keys.trainer_public_key="{keys / "t.pub"}"',
    ]


def test_keygen_writes_a_key_pair(tmp_path: Path) -> None:
    signing = pytest.importorskip("p2prec.wire.signing")
    assert main(keygen_argv(tmp_path)) == 0
    private, public = tmp_path / "keys" / "t.key", tmp_path / "keys" / "t.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signer = signing.Signer.load(private)
    assert signing.Verifier.load(public).public_key_bytes == signer.public_key_bytes


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: Capture) -> None:
    pytest.importorskip("p2prec.wire.signing")
    argv = keygen_argv(tmp_path)
    assert main(argv) == 0
    before = (tmp_path / "keys" / "t.key").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    assert_one_error_line(capsys, "already exists (use --force to overwrite)")
    assert (tmp_path / "keys" / "t.key").read_bytes() == before


def test_keygen_force_replaces(tmp_path: Path) -> None:
    pytest.importorskip("p2prec.wire.signing")
    argv = keygen_argv(tmp_path)
    assert main(argv) == 0
    before = (tmp_path / "keys" / "t.key").read_bytes()
    assert main([*argv, "--force"]) == 0
    private = tmp_path / "keys" / "t.key"
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keygen_default_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("p2prec.wire.signing")
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", "--config", "local"]) == 0
    assert (tmp_path / "keys" / "trainer.key").is_file()
    assert (tmp_path / "keys" / "trainer.pub").is_file()


def test_keygen_unwritable_path(tmp_path: Path, capsys: Capture) -> None:
    pytest.importorskip("p2prec.wire.signing")
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["keygen", "--set", f'keys.trainer_signing_key="{blocker / "t.key"}"']
    assert main(argv) == 2
    assert_one_error_line(capsys, "keygen:")


def test_keygen_curve_writes_member_key_pairs(tmp_path: Path) -> None:
    argv = ["keygen", "--set", f"keys.curve_dir={tmp_path / 'curve'}", "--curve", "n1", "n2"]
    assert main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "curve").iterdir())
    assert names == ["n1.key", "n1.key_secret", "n2.key", "n2.key_secret"]
    assert main(argv) == 2  # never overwrites without --force
    assert main([*argv, "--force"]) == 0
