"""The trainer's checkpoint file: torch state, stream position and counters, written
atomically (temporary file, then rename) with ``torch.save`` and read back with
``weights_only=True`` (tensors and plain values only: a checkpoint cannot run code).

Numpy arrays in the state are stored as tensors and come back as numpy arrays.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1
_NUMPY = "__numpy__"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or written; the message names the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save({"format": FORMAT, "state": _to_torch(state)}, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint: {exc.strerror}") from None


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint file."""
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable trainer checkpoint: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a trainer checkpoint of format {FORMAT}")
    state: dict[str, Any] = _to_numpy(data["state"])
    return state


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {_NUMPY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_torch(v) for v in value)
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_NUMPY}:
            return value[_NUMPY].numpy()
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_numpy(v) for v in value)
    return value
