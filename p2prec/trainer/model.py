"""The torch two-tower model: growable embedding tables keyed by arbitrary int64 ids, and the
user tower MLP. It computes exactly ``p2prec.model.scoring`` (numpy), on the same parameters:

    logit(u, v) = (u + relu(u @ w1 + b1) @ w2 + b2) . v + bias

Embedding rows are updated by a row-wise Adagrad written here (not ``nn.Embedding``): only the
rows a batch names take part in a step, tables grow as new ids arrive, and the rows a step
touched are known exactly, which is what the trainer publishes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from p2prec.model.keyindex import ABSENT, KeyIndex
from p2prec.model.scoring import B1, B2, BIAS, W1, W2

I64 = npt.NDArray[np.int64]
ADAGRAD_EPS = 1e-8
INITIAL_ROWS = 1024


class EmbeddingRows:
    """One embedding table on ``device``: id -> row index (growable), rows, Adagrad state."""

    def __init__(
        self, dim: int, device: torch.device, init_std: float, generator: torch.Generator
    ) -> None:
        self.dim = dim
        self.device = device
        self.init_std = init_std
        self.generator = generator  # CPU generator: new rows are equal on every device
        self.index = KeyIndex(INITIAL_ROWS)
        self.weight = torch.zeros((INITIAL_ROWS, dim), device=device)
        self.accum = torch.zeros(INITIAL_ROWS, device=device)  # Adagrad: one sum per row
        self._free: list[int] = []
        self._high_water = 0

    def __len__(self) -> int:
        return self._high_water - len(self._free)

    def rows_of(self, ids: I64) -> I64:
        """Row indices of unique ``ids``; unseen ids get new rows (random initial values)."""
        positions = self.index.find_or_insert(ids)
        rows = self.index.values(positions).copy()
        new = rows == ABSENT
        if new.any():
            rows[new] = self._allocate(int(new.sum()))
            self.index.set_values(positions[new], rows[new])
            init = torch.randn((int(new.sum()), self.dim), generator=self.generator)
            self.weight[torch.from_numpy(rows[new]).to(self.device)] = (init * self.init_std).to(
                self.device
            )
        return rows

    def lookup(self, ids: I64) -> I64:
        """Row indices of ``ids`` (ABSENT where unknown); creates nothing."""
        return self.index.lookup(ids)

    def _allocate(self, count: int) -> I64:
        reused = [self._free.pop() for _ in range(min(count, len(self._free)))]
        fresh = count - len(reused)
        self._grow(self._high_water + fresh)
        rows = np.array(reused + list(range(self._high_water, self._high_water + fresh)))
        self._high_water += fresh
        self.accum[torch.from_numpy(rows).to(self.device)] = 0.0
        return rows.astype(np.int64)

    def _grow(self, needed: int) -> None:
        capacity = self.weight.shape[0]
        if needed <= capacity:
            return
        while capacity < needed:
            capacity *= 2
        extra = capacity - self.weight.shape[0]
        self.weight = torch.cat([self.weight, self.weight.new_zeros((extra, self.dim))])
        self.accum = torch.cat([self.accum, self.accum.new_zeros(extra)])

    def adagrad(self, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """Row-wise Adagrad step on ``rows`` (unique) with their gradient."""
        accum = self.accum[rows] + grad.pow(2).mean(dim=1)
        self.accum[rows] = accum
        self.weight[rows] -= lr * grad / (accum.sqrt() + ADAGRAD_EPS).unsqueeze(1)

    def values(self, ids: I64) -> npt.NDArray[np.float32]:
        """Current rows of known ``ids`` (all must be known), as float32 numpy."""
        rows = self.lookup(ids)
        if (rows < 0).any():
            raise KeyError("values() of an unknown id")
        out: npt.NDArray[np.float32] = (
            self.weight[torch.from_numpy(rows).to(self.device)].cpu().numpy()
        )
        return out

    def keys(self) -> I64:
        return self.index.items()[0]

    def assign(self, ids: I64, values: npt.NDArray[np.floating]) -> None:
        """Set the rows of unique ``ids`` (created when unseen) to ``values``."""
        rows = torch.from_numpy(self.rows_of(ids)).to(self.device)
        self.weight[rows] = torch.as_tensor(np.asarray(values, np.float32), device=self.device)

    def drop(self, ids: I64) -> None:
        """Forget ``ids`` (their rows become free); unknown ids are ignored."""
        positions = self.index.find(ids)
        positions = positions[positions >= 0]
        rows = self.index.values(positions)
        live = rows >= 0
        self.index.set_values(positions[live], np.full(int(live.sum()), ABSENT))
        self._free.extend(int(r) for r in rows[live])

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        keys, rows = self.index.items()
        idx = torch.from_numpy(rows).to(self.device)
        return {
            "keys": torch.from_numpy(keys.copy()),
            "weight": self.weight[idx].cpu(),
            "accum": self.accum[idx].cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = state["keys"].numpy().astype(np.int64)
        self.index = KeyIndex(max(INITIAL_ROWS, keys.size))
        self._free, self._high_water = [], 0
        self.weight = torch.zeros((INITIAL_ROWS, self.dim), device=self.device)
        self.accum = torch.zeros(INITIAL_ROWS, device=self.device)
        rows = torch.from_numpy(self.rows_of(keys)).to(self.device)
        self.weight[rows] = state["weight"].to(self.device)
        self.accum[rows] = state["accum"].to(self.device)


class UserTower(nn.Module):
    """Residual MLP over the user embedding, plus the output bias (the dense weights)."""

    def __init__(self, dim: int, hidden: int, generator: torch.Generator) -> None:
        super().__init__()
        scale = dim**-0.5
        self.w1 = nn.Parameter(torch.randn((dim, hidden), generator=generator) * scale)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        # Starts at zero: the tower starts as the identity and learns a correction.
        self.w2 = nn.Parameter(torch.zeros((hidden, dim)))
        self.b2 = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(1))

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(users @ self.w1 + self.b1)
        out: torch.Tensor = users + hidden @ self.w2 + self.b2
        return out

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = (self.user_vectors(users) * items).sum(dim=1) + self.bias
        return logits

    def published(self) -> dict[str, npt.NDArray[np.float32]]:
        """The dense tensors under their published names (``p2prec.model.scoring``)."""
        named = {W1: self.w1, B1: self.b1, W2: self.w2, B2: self.b2, BIAS: self.bias}
        return {name: t.detach().cpu().numpy().copy() for name, t in named.items()}

    def assign(self, tensors: dict[str, npt.NDArray[np.floating]]) -> None:
        """Load published dense tensors (names as in ``published``)."""
        named = {W1: self.w1, B1: self.b1, W2: self.w2, B2: self.b2, BIAS: self.bias}
        with torch.no_grad():
            for name, param in named.items():
                if name in tensors:
                    value = torch.from_numpy(np.array(tensors[name], dtype=np.float32))
                    param.copy_(value.reshape(param.shape))
