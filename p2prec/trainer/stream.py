"""A seeded synthetic click stream with the dynamics that make freshness matter.

Users and items arrive continuously (arbitrary 63-bit ids); a share of new items *trend*:
their popularity rises to a peak ``trend_peak_s`` after they appear, then fades; every user's
interest vector drifts as a random walk. An impression picks a user by activity and an item by
current popularity; the click probability grows with the affinity of the user's interest and
the item's topic and with the item's current popularity. Stream time advances by
``1 / samples_per_s`` per impression, independent of the wall clock.

Everything is drawn from one ``numpy.random.Generator`` seeded with ``seed``, in a fixed
order: equal specs give equal batches.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from p2prec.config import TrainerConfig
from p2prec.trainer.batch import Batch

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

AFFINITY_WEIGHT = 3.0  # click logit per unit of cosine(user interest, item topic)
POPULARITY_WEIGHT = 0.6  # click logit per unit of log(item popularity / mean popularity)
CLICK_OFFSET = -1.0  # click logit of a neutral impression
TREND_PEAK_WEIGHT = 20.0  # a trending item's peak popularity, relative to a typical item
ID_MAX = 1 << 62  # ids are drawn uniformly from 1 .. ID_MAX - 1


@dataclass(frozen=True)
class StreamSpec:
    """Rates and sizes of the synthetic stream (see ``TrainerConfig`` for each key's doc)."""

    seed: int = 0
    batch_samples: int = 256
    samples_per_s: float = 1000.0
    new_users_per_s: float = 5.0
    new_items_per_s: float = 1.0
    users_max: int = 10_000
    items_max: int = 1_000
    trend_share: float = 0.3
    trend_peak_s: float = 60.0
    drift_per_s: float = 0.02
    latent_dim: int = 16

    @classmethod
    def from_config(cls, config: TrainerConfig) -> StreamSpec:
        return cls(
            seed=config.seed,
            batch_samples=config.batch_samples,
            samples_per_s=config.stream_samples_per_s,
            new_users_per_s=config.stream_new_users_per_s,
            new_items_per_s=config.stream_new_items_per_s,
            users_max=config.stream_users_max,
            items_max=config.stream_items_max,
            trend_share=config.stream_trend_share,
            trend_peak_s=config.stream_trend_peak_s,
            drift_per_s=config.stream_drift_per_s,
            latent_dim=config.stream_latent_dim,
        )


@dataclass
class _Population:
    """Users or items: ids, unit latent vectors, and per-entity numbers."""

    ids: I64
    latent: F64
    born_s: F64
    weight: F64  # users: activity; items: base popularity
    trending: npt.NDArray[np.bool_]
    seen_s: F64  # users: stream time their interest last drifted

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name)[mask])

    def extend(self, other: _Population) -> None:
        for f in fields(self):
            setattr(self, f.name, np.concatenate([getattr(self, f.name), getattr(other, f.name)]))

    def __len__(self) -> int:
        return int(self.ids.size)


class SyntheticStream:
    """The built-in click stream (a ``BatchSource``); see the module docstring."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.now_s = 0.0
        self.users = self._new(spec.users_max // 2, trend_share=0.0, age_max_s=0.0)
        self.items = self._new(spec.items_max // 2, trend_share=0.0, age_max_s=0.0)
        self._debt = np.zeros(2)  # fractional arrivals carried over (users, items)

    # -- population ----------------------------------------------------------------------------

    def _new(self, count: int, trend_share: float, age_max_s: float) -> _Population:
        rng, dim = self.rng, self.spec.latent_dim
        latent = rng.standard_normal((count, dim))
        latent /= np.linalg.norm(latent, axis=1, keepdims=True)
        born = self.now_s - rng.random(count) * age_max_s
        return _Population(
            ids=rng.integers(1, ID_MAX, count, dtype=np.int64),
            latent=latent,
            born_s=born,
            weight=rng.lognormal(0.0, 1.0, count),
            trending=rng.random(count) < trend_share,
            seen_s=born.copy(),
        )

    def _arrivals(self, dt_s: float) -> None:
        spec = self.spec
        self._debt += np.array([spec.new_users_per_s, spec.new_items_per_s]) * dt_s
        new_users, new_items = (int(n) for n in np.floor(self._debt))
        self._debt -= (new_users, new_items)
        self.users.extend(self._new(new_users, 0.0, dt_s))
        self.items.extend(self._new(new_items, spec.trend_share, dt_s))
        if len(self.users) > spec.users_max:  # the oldest users retire
            self.users.keep(np.arange(len(self.users)) >= len(self.users) - spec.users_max)
        if len(self.items) > spec.items_max:  # the least popular items retire
            weights = self.item_popularity()
            cut = np.sort(weights)[len(self.items) - spec.items_max]
            keep = weights >= cut
            keep[np.flatnonzero(keep)[: max(0, int(keep.sum()) - spec.items_max)]] = False
            self.items.keep(keep)

    def item_popularity(self) -> F64:
        """Each active item's current popularity (impression weight)."""
        items = self.items
        age = np.maximum(self.now_s - items.born_s, 0.0) / self.spec.trend_peak_s
        trend = TREND_PEAK_WEIGHT * age * np.exp(1.0 - age)  # rises to its peak at age 1
        popularity: F64 = items.weight * np.where(items.trending, trend, 1.0) + 1e-6
        return popularity

    def _drift(self, users: I64) -> None:
        """Random-walk the interests of ``users`` (indices, unique) up to now."""
        pop = self.users
        elapsed = np.maximum(self.now_s - pop.seen_s[users], 0.0)
        steps = self.rng.standard_normal((users.size, self.spec.latent_dim))
        moved = pop.latent[users] + steps * (self.spec.drift_per_s * np.sqrt(elapsed))[:, None]
        pop.latent[users] = moved / np.linalg.norm(moved, axis=1, keepdims=True)
        pop.seen_s[users] = self.now_s

    # -- batches -------------------------------------------------------------------------------

    def next_batch(self) -> Batch:
        spec, rng = self.spec, self.rng
        n = spec.batch_samples
        dt_s = n / spec.samples_per_s
        self._arrivals(dt_s)
        times = self.now_s + np.sort(rng.random(n)) * dt_s
        self.now_s += dt_s
        popularity = self.item_popularity()
        items = _draw(rng, popularity, n)
        users = _draw(rng, self.users.weight, n)
        self._drift(np.unique(users))
        affinity = np.einsum("ij,ij->i", self.users.latent[users], self.items.latent[items])
        relative = np.log(popularity[items] / popularity.mean())
        logit = AFFINITY_WEIGHT * affinity + POPULARITY_WEIGHT * relative + CLICK_OFFSET
        clicks = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        return Batch(self.users.ids[users], self.items.ids[items], clicks.astype(np.float32), times)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "now_s": self.now_s,
            "debt": self._debt.copy(),
            "rng": self.rng.bit_generator.state,
            "users": {f.name: getattr(self.users, f.name).copy() for f in fields(_Population)},
            "items": {f.name: getattr(self.items, f.name).copy() for f in fields(_Population)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.now_s = float(state["now_s"])
        self._debt = np.asarray(state["debt"], dtype=np.float64)
        self.rng.bit_generator.state = state["rng"]
        self.users = _Population(**{k: np.asarray(v) for k, v in state["users"].items()})
        self.items = _Population(**{k: np.asarray(v) for k, v in state["items"].items()})


def _draw(rng: np.random.Generator, weights: F64, count: int) -> I64:
    """``count`` indices drawn with probability proportional to ``weights``."""
    cumulative = np.cumsum(weights)
    picks = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
    out: I64 = np.minimum(picks, weights.size - 1).astype(np.int64)
    return out
