"""Replay of a real interaction log: CSV lines ``user,item,label,timestamp``.

``user`` and ``item`` are int64 ids, ``label`` is 0 or 1 (a click or not), ``timestamp`` is in
seconds (int or float) and must not go backwards. A first line ``user,item,label,timestamp`` is
taken as a header. Blank lines are skipped. Anything else wrong stops the replay with a
``CsvLogError`` naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from p2prec.trainer.batch import Batch

HEADER = ["user", "item", "label", "timestamp"]
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class CsvLogError(ValueError):
    """A bad interaction log: the message names the file and line."""


class CsvLogStream:
    """Batches of ``batch_samples`` lines from an interaction log (a ``BatchSource``)."""

    def __init__(self, path: str | Path, batch_samples: int) -> None:
        if batch_samples < 1:
            raise ValueError(f"batch_samples must be >= 1, got {batch_samples}")
        self.path = Path(path)
        self.batch_samples = batch_samples
        self._open()

    def _open(self) -> None:
        self.line = 0  # lines consumed so far (header and blank lines included)
        self._last_time = -math.inf
        try:
            self._file: TextIO = self.path.open(newline="", encoding="utf-8")
        except OSError as exc:
            raise CsvLogError(f"{self.path}: cannot open: {exc.strerror}") from None
        self._reader = csv.reader(self._file)

    def close(self) -> None:
        self._file.close()

    def next_batch(self) -> Batch | None:
        """The next batch, or None at the end of the log (a last short batch comes first)."""
        rows: list[tuple[int, int, float, float]] = []
        while len(rows) < self.batch_samples:
            fields = self._next_fields()
            if fields is None:
                break
            if fields:
                rows.append(self._parse(fields))
        if not rows:
            return None
        users, items, labels, times = zip(*rows, strict=True)
        return Batch(
            np.array(users, dtype=np.int64),
            np.array(items, dtype=np.int64),
            np.array(labels, dtype=np.float32),
            np.array(times, dtype=np.float64),
        )

    def _next_fields(self) -> list[str] | None:
        """Fields of the next data line ([] for a blank or header line), None at the end."""
        try:
            fields = next(self._reader)
        except StopIteration:
            return None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CsvLogError(f"{self.path}:{self.line + 1}: unreadable line: {exc}") from None
        self.line += 1
        stripped = [f.strip() for f in fields]
        if not any(stripped) or (self.line == 1 and [f.lower() for f in stripped] == HEADER):
            return []
        return stripped

    def _parse(self, fields: list[str]) -> tuple[int, int, float, float]:
        where = f"{self.path}:{self.line}"
        if len(fields) != len(HEADER):
            raise CsvLogError(
                f"{where}: expected 4 fields user,item,label,timestamp, got {len(fields)}"
            )
        user, item = _id(where, "user", fields[0]), _id(where, "item", fields[1])
        if fields[2] not in ("0", "1"):
            raise CsvLogError(f"{where}: label: expected 0 or 1, got {fields[2]!r}")
        time_s = _timestamp(where, fields[3])
        if time_s < self._last_time:
            raise CsvLogError(
                f"{where}: timestamp {fields[3]} goes back (previous {self._last_time:g})"
            )
        self._last_time = time_s
        return user, item, float(fields[2]), time_s

    def state_dict(self) -> dict[str, Any]:
        return {"line": self.line, "last_time_s": self._last_time}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Skip to the line the saved state had reached (the file is read again)."""
        target = int(state["line"])
        self.close()
        self._open()
        while self.line < target and self._next_fields() is not None:
            pass
        self._last_time = float(state["last_time_s"])


def _id(where: str, name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CsvLogError(f"{where}: {name}: expected an int64 id, got {text!r}") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise CsvLogError(f"{where}: {name}: {text} does not fit in int64")
    return value


def _timestamp(where: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CsvLogError(f"{where}: timestamp: expected seconds (a number), got {text!r}")
    return value
