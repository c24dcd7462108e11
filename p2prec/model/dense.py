"""The dense shard: whole tensors (MLP weights) replaced by newer versions."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from p2prec.model.rowhash import bytes_hash
from p2prec.model.steplog import DenseValue

FloatArray = npt.NDArray[np.floating]


_MOD = 1 << 64


def tensor_hash(name: str, value: DenseValue) -> int:
    arr = value.array
    meta = f"{name}|{arr.dtype.str}|{arr.shape}|{value.version}".encode()
    return int(bytes_hash(meta, np.ascontiguousarray(arr).tobytes()))


class DenseShard:
    """Named dense tensors with the version that wrote each, and their content digest."""

    def __init__(self) -> None:
        self.values: dict[str, DenseValue] = {}
        self.digest = 0  # sum of tensor hashes mod 2**64
        self._hashes: dict[str, int] = {}  # tensor_hash of each value held (not hashed again)

    def _set(self, name: str, value: DenseValue | None) -> None:
        if self.values.pop(name, None) is not None:
            self.digest = (self.digest - self._hashes.pop(name)) % _MOD
        if value is not None:
            digest = tensor_hash(name, value)
            self.values[name] = value
            self._hashes[name] = digest
            self.digest = (self.digest + digest) % _MOD

    def write(
        self, tensors: Mapping[str, FloatArray], version: int
    ) -> dict[str, DenseValue | None]:
        """Replace tensors older than ``version``; returns the replaced values (for undo)."""
        replaced: dict[str, DenseValue | None] = {}
        for name, array in tensors.items():
            old = self.values.get(name)
            if old is not None and old.version >= version:
                continue
            frozen = np.array(array, copy=True)
            frozen.flags.writeable = False
            replaced[name] = old
            self._set(name, DenseValue(frozen, version))
        return replaced

    def revert(self, replaced: Mapping[str, DenseValue | None]) -> None:
        for name, old in replaced.items():
            self._set(name, old)

    def replace_all(self, values: Mapping[str, DenseValue]) -> None:
        for name in list(self.values):
            self._set(name, None)
        for name, value in values.items():
            self._set(name, value)

    def at(
        self, watermark: int, history: list[dict[str, DenseValue | None]]
    ) -> dict[str, DenseValue]:
        """Tensors as of ``watermark`` given the undo history of newer steps (newest first)."""
        view = dict(self.values)
        for replaced in history:
            for name, old in replaced.items():
                if name in view and view[name].version > watermark:
                    if old is None:
                        del view[name]
                    else:
                        view[name] = old
        return view
