"""`p2prec trainer`: runs N steps through a real driver, checkpoints, resumes in a new epoch;
bad settings fail with one line naming the problem; `p2prec node` never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2prec.cli import main
from p2prec.config import load_config
from p2prec.log import reset_logging

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _unconfigured_logging() -> Iterator[None]:
    yield
    reset_logging()  # the commands configure logging for the process, on this test's stderr


def settings(tmp: Path) -> list[str]:
    pairs = {
        "keys.curve_dir": tmp / "curve",
        "keys.trainer_public_key": tmp / "trainer.pub",
        "keys.trainer_signing_key": tmp / "trainer.key",
        "node.id": "trainer",
        "node.data_dir": tmp / "state",
        "store.dim": 8,
        "store.row_shards": 8,
        "trainer.batch_samples": 64,
        "trainer.hidden_units": 8,
        "trainer.samples_per_s_max": 0,
        "trainer.validate_every_steps": 10,
        "trainer.stream_users_max": 200,
        "trainer.stream_items_max": 50,
        "log.format": "json",
    }
    out = []
    for key, value in pairs.items():
        out += ["--set", f"{key}={value}"]
    return out


def keys(tmp: Path) -> list[str]:
    options = settings(tmp)
    assert main(["keygen", *options]) == 0
    assert main(["keygen", *options, "--curve", "trainer"]) == 0
    return options


def test_trainer_runs_steps_checkpoints_and_resumes_in_a_new_epoch(tmp_path: Path) -> None:
    options = keys(tmp_path)
    assert main(["trainer", "--config", "local", *options, "--device", "cpu", "--steps", "25"]) == 0
    assert (tmp_path / "state" / "trainer.pt").exists()
    assert main(["trainer", "--config", "local", *options, "--device", "cpu", "--steps", "5"]) == 0
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["role"] == "trainer" and status["epoch"] == 2


def test_bad_settings_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = settings(tmp_path)
    assert main(["trainer", *options, "--steps", "-1"]) == 2
    assert "--steps: expected N >= 0" in capsys.readouterr().err
    assert main(["trainer", *options, "--set", "node.id=n1"]) == 2
    assert "node.id: the trainer's id must be mesh.publisher_id" in capsys.readouterr().err
    assert main(["trainer", *options, "--set", "trainer.holdout_share=2"]) == 2
    assert "trainer.holdout_share: expected a number > 0 and <= 0.5" in capsys.readouterr().err
    assert main(["trainer", *options, "--steps", "1"]) == 2  # no keys written yet
    assert "p2prec: error: trainer: " in capsys.readouterr().err


def test_a_bad_csv_log_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = keys(tmp_path)
    log = tmp_path / "log.csv"
    log.write_text("1,2,1,10\n1,2,maybe,11\n")
    csv = ["--set", "trainer.source=csv", "--set", f"trainer.csv_path={log}"]
    assert main(["trainer", "--config", "local", *options, *csv, "--device", "cpu"]) == 2
    assert f"{log}:2: label: expected 0 or 1, got 'maybe'" in capsys.readouterr().err


def test_the_trainer_section_documents_every_key() -> None:
    text = load_config("local").to_toml_commented()
    assert "[trainer]" in text and "publish_interval_s = 0.05" in text


def test_node_paths_never_import_torch() -> None:
    code = (
        "import sys\n"
        "import p2prec.cli, p2prec.io.node, p2prec.model.scoring, p2prec.io.synthetic\n"
        "p2prec.cli.build_parser().parse_args(['node', '--config', 'local'])\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
