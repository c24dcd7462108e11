"""Online learning: one mini-batch step of the two-tower model, and which rows it touched.

The learner owns the torch state (embedding tables, user tower, optimizers). It can also take
its parameters from a ``ParamStore`` (``adopt``): after a rollback, or on a restart, the
published state is the truth the trainer continues from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from p2prec.model.scoring import ITEM_TABLE, USER_TABLE
from p2prec.model.store import ParamStore
from p2prec.trainer.batch import Batch
from p2prec.trainer.model import EmbeddingRows, UserTower

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LearnerSpec:
    dim: int
    hidden_units: int = 64
    embedding_learning_rate: float = 0.05
    dense_learning_rate: float = 0.003
    embedding_init_std: float = 0.05
    seed: int = 0


@dataclass(frozen=True, eq=False)
class StepResult:
    """What one training step did: the ids of the rows it changed per table, and its loss."""

    touched: dict[str, I64]  # sorted unique ids
    loss: float


def resolve_device(name: str) -> torch.device:
    """'auto': CUDA when present, else the CPU; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


class OnlineLearner:
    """The torch model and its optimizers (see module docstring)."""

    def __init__(self, spec: LearnerSpec, device: torch.device) -> None:
        self.spec = spec
        self.device = device
        generator = torch.Generator().manual_seed(spec.seed)
        self.tables = {
            name: EmbeddingRows(spec.dim, device, spec.embedding_init_std, generator)
            for name in (USER_TABLE, ITEM_TABLE)
        }
        self.tower = UserTower(spec.dim, spec.hidden_units, generator).to(device)
        self.optimizer = torch.optim.Adam(self.tower.parameters(), lr=spec.dense_learning_rate)
        self.steps = 0

    def step(self, batch: Batch) -> StepResult:
        """One Adam step of the tower and one Adagrad step of the rows the batch names."""
        user_ids, users, user_rows, user_of = self._gather(USER_TABLE, batch.users)
        item_ids, items, item_rows, item_of = self._gather(ITEM_TABLE, batch.items)
        labels = torch.from_numpy(batch.labels).to(self.device)
        logits = self.tower(users[user_of], items[item_of])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        lr = self.spec.embedding_learning_rate
        with torch.no_grad():
            assert users.grad is not None and items.grad is not None
            self.tables[USER_TABLE].adagrad(user_rows, users.grad, lr)
            self.tables[ITEM_TABLE].adagrad(item_rows, items.grad, lr)
        self.steps += 1
        return StepResult({USER_TABLE: user_ids, ITEM_TABLE: item_ids}, float(loss.detach()))

    def _gather(self, table: str, ids: I64) -> tuple[I64, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unique ids (sorted), a leaf tensor of their rows, their row indices, and each
        sample's position among them."""
        unique, inverse = np.unique(ids, return_inverse=True)
        rows = torch.from_numpy(self.tables[table].rows_of(unique)).to(self.device)
        leaf = self.tables[table].weight[rows].clone().requires_grad_(True)
        return unique, leaf, rows, torch.from_numpy(inverse.reshape(-1)).to(self.device)

    @torch.no_grad()
    def logits(self, users: I64, items: I64) -> npt.NDArray[np.float32]:
        """Scores of (user, item) pairs; unknown ids score with a zero row (as the store)."""
        u = self._rows_or_zero(USER_TABLE, users)
        v = self._rows_or_zero(ITEM_TABLE, items)
        out: npt.NDArray[np.float32] = self.tower(u, v).cpu().numpy()
        return out

    def _rows_or_zero(self, table: str, ids: I64) -> torch.Tensor:
        emb = self.tables[table]
        rows = torch.from_numpy(emb.lookup(np.asarray(ids, np.int64))).to(self.device)
        known = rows >= 0
        out = torch.zeros((rows.shape[0], emb.dim), device=self.device)
        out[known] = emb.weight[rows[known]]
        return out

    # -- parameters as published ---------------------------------------------------------------

    def rows(self, table: str, ids: I64) -> npt.NDArray[np.float32]:
        return self.tables[table].values(ids)

    def dense(self) -> dict[str, npt.NDArray[np.float32]]:
        return self.tower.published()

    def adopt(self, store: ParamStore) -> None:
        """Take every parameter from ``store``'s head: rows it holds are assigned, ids it lacks
        are forgotten, dense tensors it holds are loaded (Adam and Adagrad state is kept)."""
        for name, emb in self.tables.items():
            table = store.tables[name]
            keys, slots = table.live_slots()
            gone = np.setdiff1d(emb.keys(), keys, assume_unique=True)
            emb.drop(gone)
            if keys.size:
                emb.assign(keys, table.rows_at(slots))
        self.tower.assign(store.dense_tensors())

    # -- checkpoint state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "tables": {name: emb.state_dict() for name, emb in self.tables.items()},
            "tower": {k: v.cpu() for k, v in self.tower.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, emb in self.tables.items():
            emb.load_state_dict(state["tables"][name])
        self.tower.load_state_dict(state["tower"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
