"""The validator: scores the published head and the last validated state on the same recent
held-out samples (numpy scoring over the publisher's store, exactly what nodes would serve)
and decides: pass (publish ``Validated``), fail (``Rollback`` to the watermark), or skip
(too few samples to judge)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2prec.model.scoring import ModelUnavailable, score_pairs
from p2prec.model.store import ParamStore
from p2prec.trainer.batch import Batch
from p2prec.trainer.metrics import Metrics, evaluate

SAMPLES_MIN = 64  # fewer held-out samples (or one class only) cannot judge a model


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    head: Metrics | None
    baseline: Metrics | None  # the last validated state on the same samples (None: none yet)


@dataclass(frozen=True)
class ValidationSpec:
    auc_drop_max: float = 0.02
    logloss_rise_max: float = 0.05


class Holdout:
    """The most recent held-out samples: a ring buffer of ``capacity`` impressions."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = Batch.concat([])
        self._parts: list[Batch] = []

    def add(self, batch: Batch) -> None:
        self._parts.append(batch)

    def samples(self) -> Batch:
        if self._parts:
            merged = Batch.concat([self._data, *self._parts])
            self._parts = []
            keep = np.arange(len(merged)) >= len(merged) - self.capacity
            self._data = merged.take(keep)
        return self._data

    def state_dict(self) -> dict[str, Any]:
        data = self.samples()
        return {
            "users": data.users,
            "items": data.items,
            "labels": data.labels,
            "times_s": data.times_s,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._data = Batch(**{k: np.asarray(v) for k, v in state.items()})
        self._parts = []


class Validator:
    """Judges the head against the last validated state (see module docstring)."""

    def __init__(self, spec: ValidationSpec) -> None:
        self.spec = spec

    def judge(self, store: ParamStore, samples: Batch) -> Verdict:
        if len(samples) < SAMPLES_MIN or np.unique(samples.labels).size < 2:
            return Verdict(Outcome.SKIP, None, None)
        head = _metrics(store, samples, validated=False)
        baseline = _metrics(store, samples, validated=True)
        if head is None:
            return Verdict(Outcome.SKIP, None, baseline)
        if baseline is None:
            return Verdict(Outcome.PASS, head, None)
        worse = (
            head.auc < baseline.auc - self.spec.auc_drop_max
            or head.logloss > baseline.logloss + self.spec.logloss_rise_max
        )
        return Verdict(Outcome.FAIL if worse else Outcome.PASS, head, baseline)


def _metrics(store: ParamStore, samples: Batch, validated: bool) -> Metrics | None:
    try:
        scores = score_pairs(store, samples.users, samples.items, validated=validated)
    except ModelUnavailable:
        return None
    return evaluate(samples.labels, scores.logits)
