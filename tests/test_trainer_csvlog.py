"""Replay of an interaction log: batches from good lines, one clear error for a bad line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from p2prec.trainer.csvlog import CsvLogError, CsvLogStream


def write(tmp: Path, text: str) -> Path:
    path = tmp / "log.csv"
    path.write_text(text)
    return path


def test_lines_become_batches_and_the_log_ends(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "user,item,label,timestamp\n1,10,1,100\n2,-9223372036854775808,0,100.5\n\n3,12,1,101\n",
    )
    stream = CsvLogStream(path, batch_samples=2)
    first = stream.next_batch()
    assert first is not None
    assert first.users.tolist() == [1, 2] and first.items.tolist() == [10, -(2**63)]
    assert first.labels.tolist() == [1.0, 0.0] and first.times_s.tolist() == [100.0, 100.5]
    last = stream.next_batch()
    assert last is not None and last.users.tolist() == [3]
    assert stream.next_batch() is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1,2,1", "expected 4 fields user,item,label,timestamp, got 3"),
        ("x,2,1,5", "user: expected an int64 id, got 'x'"),
        ("1,99999999999999999999,1,5", "item: 99999999999999999999 does not fit in int64"),
        ("1,2,yes,5", "label: expected 0 or 1, got 'yes'"),
        ("1,2,1,soon", "timestamp: expected seconds (a number), got 'soon'"),
        ("1,2,1,inf", "timestamp: expected seconds"),
        ("1,2,1,4", "timestamp 4 goes back (previous 5)"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, f"1,2,0,5\n{line}\n")
    stream = CsvLogStream(path, batch_samples=10)
    with pytest.raises(CsvLogError) as info:
        stream.next_batch()
    assert str(info.value).startswith(f"{path}:2: ")
    assert message in str(info.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CsvLogError, match=r"missing\.csv: cannot open"):
        CsvLogStream(tmp_path / "missing.csv", 4)


def test_state_resumes_after_the_lines_consumed(tmp_path: Path) -> None:
    path = write(tmp_path, "".join(f"{i},{i},1,{i}\n" for i in range(10)))
    stream = CsvLogStream(path, batch_samples=3)
    stream.next_batch()
    state = stream.state_dict()
    resumed = CsvLogStream(path, batch_samples=3)
    resumed.load_state_dict(state)
    batch = resumed.next_batch()
    assert batch is not None
    assert np.array_equal(batch.users, [3, 4, 5])
