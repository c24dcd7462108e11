"""Config: defaults, presets, conf/*.toml, validation errors naming the key, overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from p2prec.config import (
    DEFAULT_PRESET,
    PRESETS,
    Config,
    ConfigError,
    MeshConfig,
    build_config,
    load_config,
    section_classes,
)

CONF = Path(__file__).resolve().parent.parent / "conf"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p2prec.toml"
    path.write_text(text)
    return path


# --- defaults and presets ---------------------------------------------------------------------


def test_defaults_load() -> None:
    config = load_config()
    assert config == Config()
    assert config.preset == DEFAULT_PRESET == "lan"
    assert config.node.id == "node-1"
    assert config.node.data_dir == "state/node-1"
    assert config.node.role == "node"
    assert config.store.row_shards == 64
    assert config.store.tables == ("user", "item")
    assert config.wire.max_frame_bytes == 64 * 1024 * 1024
    assert config.mesh.fanout == 4
    assert config.mesh.seeds == ()
    assert config.log.format == "console"
    assert config.keys.trainer_signing_key == "keys/trainer.key"


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.id = "x"  # type: ignore[misc]


def test_lan_preset_is_the_defaults() -> None:
    assert load_config("lan") == Config()


def test_presets_differ_in_timing_as_memberlist() -> None:
    local, lan, wan = (load_config(name).mesh for name in ("local", "lan", "wan"))
    assert local.probe_timeout_s == 0.2
    assert (lan.probe_interval_s, lan.probe_timeout_s, lan.gossip_interval_s) == (1.0, 0.5, 0.2)
    assert (wan.probe_timeout_s, wan.gossip_interval_s) == (3.0, 0.5)
    for key in ("gossip_interval_s", "probe_interval_s", "probe_timeout_s", "suspicion_mult"):
        assert getattr(local, key) <= getattr(lan, key) < getattr(wan, key), key
    for key in ("dead_node_reclaim_s", "rejoin_interval_s", "anti_entropy_interval_s"):
        assert getattr(local, key) < getattr(lan, key) < getattr(wan, key), key


def test_presets_touch_timing_only() -> None:
    for name, sections in PRESETS.items():
        assert set(sections) <= {"mesh"}, name
        for key in sections.get("mesh", {}):
            assert key.endswith(("_s", "_mult", "_nodes")), (name, key)


def test_file_starts_from_its_preset(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'preset = "wan"\n[mesh]\nfanout = 8\n'))
    assert config.preset == "wan"
    assert config.mesh.fanout == 8
    assert config.mesh.probe_interval_s == load_config("wan").mesh.probe_interval_s


def test_data_dir_follows_node_id(tmp_path: Path) -> None:
    assert load_config(overrides={"node.id": "n7"}).node.data_dir == "state/n7"
    config = load_config(overrides={"node": {"id": "n7", "data_dir": "/var/lib/p2prec"}})
    assert config.node.data_dir == "/var/lib/p2prec"


# --- documentation and rendering ----------------------------------------------------------------


def test_every_key_has_a_doc() -> None:
    for name, cls in section_classes().items():
        assert cls.__doc__, name
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc", "").strip(), f"{name}.{f.name} has no doc"
            assert f.default is not dataclasses.MISSING, f"{name}.{f.name} has no default"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_commented_toml_round_trips(preset: str) -> None:
    seeds = ["a@a:1", "b@b:2"]
    config = load_config(preset, {"mesh.seeds": seeds, "keys.curve_dir": 'k "q" \\x\tü'})
    text = config.to_toml_commented()
    assert build_config(tomllib.loads(text)) == config
    assert "# Seconds between gossip rounds" in text


def test_every_key_is_rendered_after_its_doc() -> None:
    lines = Config().to_toml_commented().splitlines()
    for name, cls in section_classes().items():
        assert f"[{name}]" in lines
        for f in dataclasses.fields(cls):
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{f.name} = "))
            assert lines[index - 1].startswith("# "), f.name


def test_to_dict_is_plain() -> None:
    data = load_config(overrides={"mesh.seeds": ["h@h:1"]}).to_dict()
    assert data["mesh"]["seeds"] == ["h@h:1"]
    assert data["store"]["tables"] == ["user", "item"]


def test_wire_limits_match_config() -> None:
    limits_mod = pytest.importorskip("p2prec.wire.limits")
    config = load_config(overrides={"wire.max_frames": 8, "wire.max_tables": 3})
    limits = config.wire_limits()
    assert isinstance(limits, limits_mod.WireLimits)
    for f in dataclasses.fields(config.wire):
        assert getattr(limits, f.name) == getattr(config.wire, f.name), f.name
    assert Config().wire_limits() == limits_mod.WireLimits()


# --- conf/*.toml ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["local", "lan", "wan"])
def test_shipped_conf_files_load(name: str) -> None:
    config = load_config(CONF / f"{name}.toml")
    assert config.preset == name
    assert config.mesh.probe_interval_s == load_config(name).mesh.probe_interval_s


def test_shipped_conf_files_agree_on_the_data_model() -> None:
    configs = [load_config(path) for path in sorted(CONF.glob("*.toml"))]
    assert len(configs) >= 3
    assert len({(c.store.row_shards, c.store.dim, c.store.tables) for c in configs}) == 1


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[mesh]\ngossip_interval_s = -1\n",
            "mesh.gossip_interval_s: expected a number > 0, got -1",
        ),
        ("[mesh]\ngossip_intervall_s = 1\n", "mesh.gossip_intervall_s: unknown key"),
        ("[mesh]\nprobe_interval_s = 'fast'\n", "mesh.probe_interval_s: expected a number"),
        ("[mesh]\nport = 70000\n", "mesh.port: expected an integer in 0..65535, got 70000"),
        ("[mesh]\nfanout = 2.5\n", "mesh.fanout: expected an integer"),
        ("[mesh]\nfanout = true\n", "mesh.fanout: expected an integer"),
        ("[mesh]\nseeds = 'a:1'\n", "mesh.seeds: expected a list of strings"),
        ("[mesh]\nseeds = ['nohost']\n", "mesh.seeds: expected 'node_id@host:port'"),
        ("[mesh]\nprobe_timeout_s = 2.0\n", "mesh.probe_timeout_s: must be below"),
        ("[mesh]\ngossip_interval_s = nan\n", "mesh.gossip_interval_s: expected a number"),
        ("[store]\nrow_shards = 0\n", "store.row_shards: expected an integer in 1..65536, got 0"),
        ("[store]\ntables = []\n", "store.tables: expected at least one table"),
        ("[store]\ntables = ['a', 'a']\n", "store.tables: table names must be unique"),
        ("[store]\ndtype = 'int8'\n", "store.dtype: expected one of 'float32', 'float16'"),
        (
            "[store]\nrow_shards = 64\n[wire]\nmax_vector_len = 64\n",
            "store.row_shards: must stay below wire.max_vector_len",
        ),
        ("[node]\nid = ''\n", "node.id: expected a non-empty string"),
        ("[node]\nid = 'a/b'\n", "node.id: expected 1-64 of"),
        ("[node]\nrole = 'relay'\n", "node.role: expected one of 'node', 'trainer'"),
        ("[log]\nlevel = 'loud'\n", "log.level: expected one of"),
        ("[wire]\nmax_frames = 1\n", "wire.max_frames: expected an integer in 2..65536"),
        ("mesh = 3\n", "mesh: expected a table, got 3"),
        ("[meshh]\nport = 1\n", "meshh: unknown key"),
        ('preset = "moon"\n', "preset: unknown preset 'moon'"),
        ("preset = 3\n", "preset: unknown preset 3"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value).startswith(message)


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'gossip_interval_s'"):
        load_config(write(tmp_path, "[mesh]\ngossip_intervall_s = 1\n"))


def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[mesh]\nport = = 3\n")
    with pytest.raises(ConfigError, match=r"p2prec\.toml: TOML syntax error: .*line 2"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("lann")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_sections_validate_when_built_in_code() -> None:
    with pytest.raises(ConfigError, match=r"mesh\.queue_max: expected an integer in 1\.\."):
        MeshConfig(queue_max=0)
    with pytest.raises(ConfigError, match="preset: unknown preset"):
        Config(preset="moon")


# --- overrides --------------------------------------------------------------------------------


def test_dotted_and_nested_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[mesh]\nport = 7000\nbind_host = "0.0.0.0"\n')
    overrides: dict[str, Any] = {"mesh.port": 7001, "node": {"dc": "dc3"}}
    config = load_config(path, overrides)
    assert config.mesh.port == 7001
    assert config.mesh.bind_host == "0.0.0.0"
    assert config.node.dc == "dc3"


def test_override_preset_and_ints_as_floats() -> None:
    config = load_config("local", {"preset": "wan", "mesh.gossip_interval_s": 1})
    assert config.preset == "wan"
    assert config.mesh.gossip_interval_s == 1.0
    assert isinstance(config.mesh.gossip_interval_s, float)


def test_bad_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^store\.dim: expected an integer"):
        load_config(overrides={"store.dim": "wide"})
