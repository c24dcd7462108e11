"""The trainer's loop: take a batch from the stream, hold a share out for validation, train on
the rest (poisoned while the switch is armed), publish the touched rows as deltas, validate the
head on cadence (``Validated``, or ``Rollback`` to the watermark and continue from there in the
new epoch), checkpoint the torch state.

A restart (``resume``) loads the checkpoint, then rolls the head into a new epoch: back to the
validation watermark when the store can still undo that far, else at the head itself. The
learner then takes its parameters from the store, so the torch model always continues from
what the nodes hold, and no version of the old epoch is ever issued again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from p2prec.config import Config, TrainerConfig
from p2prec.core.publisher import StaleHead
from p2prec.log import get_logger
from p2prec.model.scoring import ITEM_TABLE, USER_TABLE
from p2prec.trainer.batch import BatchSource
from p2prec.trainer.checkpoint import load_checkpoint, save_checkpoint
from p2prec.trainer.csvlog import CsvLogStream
from p2prec.trainer.extract import TouchedRows, build_deltas
from p2prec.trainer.head import Head
from p2prec.trainer.journal import JOURNAL_FILE, JournalHead
from p2prec.trainer.learner import LearnerSpec, OnlineLearner, resolve_device
from p2prec.trainer.poison import Poison
from p2prec.trainer.stream import StreamSpec, SyntheticStream
from p2prec.trainer.validator import Holdout, Outcome, ValidationSpec, Validator, Verdict
from p2prec.wire.messages import Rollback, Validated

I64 = npt.NDArray[np.int64]
CHECKPOINT_FILE = "trainer.pt"  # in node.data_dir
log = get_logger("p2prec.trainer")


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TrainerCounters:
    steps: int = 0
    samples_trained: int = 0
    samples_held_out: int = 0
    poisoned_steps: int = 0
    deltas: int = 0
    rows_published: int = 0
    dense_published: int = 0
    validations: int = 0
    validations_skipped: int = 0
    rollbacks: int = 0
    checkpoints: int = 0


class Trainer:
    """Online training that publishes into a ``Head`` (see module docstring)."""

    def __init__(
        self,
        config: TrainerConfig,
        head: Head,
        source: BatchSource,
        learner: OnlineLearner,
        checkpoint_path: Path | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        missing = {USER_TABLE, ITEM_TABLE} - set(head.store.layout.tables)
        if missing:
            raise ValueError(f"store.tables: the trainer's model needs {sorted(missing)} too")
        self.config = config
        self.head = head
        self.source = source
        self.learner = learner
        self.checkpoint_path = checkpoint_path
        self.clock_ms = clock_ms  # created_ms of published messages (an argument: tests fix it)
        self.monotonic_s = monotonic_s  # publication cadence (trainer.publish_interval_s)
        self._last_publication_s = -float("inf")
        self._steps_since_publication = 0
        self.holdout = Holdout(config.holdout_samples_max)
        self.validator = Validator(
            ValidationSpec(config.rollback_auc_drop_max, config.rollback_logloss_rise_max)
        )
        self.poison_switch = Poison(config.poison_popular_items)
        self.split_rng = np.random.default_rng([config.seed, 1])  # the holdout split
        self.counters = TrainerCounters()
        self._pending: dict[str, list[I64]] = {USER_TABLE: [], ITEM_TABLE: []}
        self._dense_changed = False
        self._steps_since_dense = 0
        self.last_verdict: Verdict | None = None
        self._unpaused = asyncio.Event()  # cleared by pause(): run() waits on it
        self._unpaused.set()
        self._validate_in_run = False  # inside run(): validations wait for the step's end
        self._validation_due = False
        self._no_validation_hashing = asyncio.Event()  # cleared while validate_stepped hashes
        self._no_validation_hashing.set()

    # -- commands --------------------------------------------------------------------------------

    def poison(self, steps: int) -> None:
        """Train the next ``steps`` batches with flipped labels on popular items (chaos)."""
        self.poison_switch.arm(steps)
        log.warning("poison_armed", steps=steps, popular_items=self.config.poison_popular_items)

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    def pause(self) -> None:
        """Stop training and publishing after the current step (``run`` waits), once what is
        pending is published: the mesh goes quiet at a complete head (admin, checkers)."""
        if not self.paused:
            self.publish(force_dense=True)
            self._unpaused.clear()
            log.info("trainer_paused", steps=self.counters.steps)

    async def settled(self) -> None:
        """Return once no validation is being hashed: one begun before a ``pause`` publishes
        its ``validated`` when it ends, so the watermark may still move until then."""
        await self._no_validation_hashing.wait()

    def unpause(self) -> None:
        """Continue after ``pause`` (``resume`` is the restart from a checkpoint)."""
        if self.paused:
            self._unpaused.set()
            log.info("trainer_unpaused", steps=self.counters.steps)

    def train_step(self) -> bool:
        """One batch: hold out, train, and publish/validate/checkpoint when due. False once the
        stream has ended."""
        batch = self.source.next_batch()
        if batch is None:
            return False
        held = self.split_rng.random(len(batch)) < self.config.holdout_share
        self.holdout.add(batch.take(held))
        train = batch.take(~held)
        if self.poison_switch.active:
            train = self.poison_switch.apply(train)
            self.counters.poisoned_steps += 1
        else:
            self.poison_switch.observe(train)
        if len(train):
            result = self.learner.step(train)
            for name, keys in result.touched.items():
                self._pending[name].append(keys)
            self._dense_changed = True
        self._count(len(train), int(held.sum()))
        self._after_step()
        return True

    def _count(self, trained: int, held_out: int) -> None:
        self.counters.steps += 1
        self.counters.samples_trained += trained
        self.counters.samples_held_out += held_out
        self._steps_since_dense += 1
        self._steps_since_publication += 1

    def _after_step(self) -> None:
        steps, config = self.counters.steps, self.config
        if self._publication_due():
            self.publish()
        if config.validate_every_steps and steps % config.validate_every_steps == 0:
            if self._validate_in_run:
                self._validation_due = True  # ``run`` validates, hashing the head in steps
            else:
                self.validate()
        if self.checkpoint_path is not None and steps % config.checkpoint_every_steps == 0:
            self.checkpoint()

    def _publication_due(self) -> bool:
        if self._steps_since_publication < self.config.publish_every_steps:
            return False
        interval = self.config.publish_interval_s
        return interval <= 0 or self.monotonic_s() - self._last_publication_s >= interval

    async def run(self, steps: int = 0) -> int:
        """Train ``steps`` batches (0: until the stream ends or the task is cancelled), at most
        ``samples_per_s_max`` samples per wall-clock second; yields to the event loop (the
        mesh driver) after every step. Returns the steps done."""
        loop = asyncio.get_running_loop()
        start, done, samples = loop.time(), 0, 0
        rate = self.config.samples_per_s_max
        self._validate_in_run = True
        try:
            while steps == 0 or done < steps:
                if self.paused:
                    await self._unpaused.wait()
                    start, samples = loop.time(), 0  # the rate bound restarts after a pause
                before = self.counters.samples_trained + self.counters.samples_held_out
                if not self.train_step():
                    break
                if self._validation_due:
                    self._validation_due = False
                    await self.validate_stepped()
                done += 1
                samples += self.counters.samples_trained + self.counters.samples_held_out - before
                delay = start + samples / rate - loop.time() if rate > 0 else 0.0
                await asyncio.sleep(max(0.0, delay))
        finally:
            self._validate_in_run = False
        self.publish(force_dense=True)
        return done

    # -- publishing ------------------------------------------------------------------------------

    def publish(self, force_dense: bool = False) -> int:
        """Publish the rows touched since the last publication (latest values, each once) and
        the dense tensors when due and changed; returns the deltas published."""
        self._steps_since_publication = 0
        if self.config.publish_interval_s > 0:
            self._last_publication_s = self.monotonic_s()
        tables = {}
        for name, parts in self._pending.items():
            if parts:
                keys = np.unique(np.concatenate(parts))
                tables[name] = TouchedRows(keys, self.learner.rows(name, keys))
            self._pending[name] = []
        dense_due = force_dense or self._steps_since_dense >= self.config.dense_every_steps
        dense = self.learner.dense() if dense_due and self._dense_changed else {}
        if not tables and not dense:
            return 0
        store = self.head.store
        deltas = build_deltas(
            store.layout,
            self.head.shard_groups,
            store.vector.packed,
            self.head.epoch,
            tables,
            dense,
            self.clock_ms(),
        )
        for delta in deltas:
            self.head.publish(delta)
        self._note_published(len(deltas), sum(len(t.keys) for t in tables.values()), bool(dense))
        return len(deltas)

    def _note_published(self, deltas: int, rows: int, with_dense: bool) -> None:
        self.counters.deltas += deltas
        self.counters.rows_published += rows
        if with_dense:
            self.counters.dense_published += 1
            self._dense_changed = False
            self._steps_since_dense = 0

    # -- validation and rollback -----------------------------------------------------------------

    def validate(self) -> Verdict:
        """Publish what is pending, then judge the head: Validated, Rollback, or nothing."""
        verdict = self._judge()
        if verdict.outcome is Outcome.PASS:
            self._validated(self.head.validated_head(self.clock_ms()), verdict)
        else:
            self._not_passed(verdict)
        return verdict

    async def validate_stepped(self) -> Verdict:
        """``validate``, the passed head's digests hashed a few shards per loop turn (the mesh
        driver and the HTTP API go on meanwhile). A rollback meanwhile (an admin call) leaves
        another head than the one judged: that validation is skipped."""
        verdict = self._judge()
        if verdict.outcome is not Outcome.PASS:
            self._not_passed(verdict)
            return verdict
        self._no_validation_hashing.clear()
        try:
            validated = await self.head.validated_head_stepped(self.clock_ms())
        except StaleHead as exc:
            self.counters.validations_skipped += 1
            log.info("validation_skipped", reason=str(exc))
            return verdict
        finally:
            self._no_validation_hashing.set()
        self._validated(validated, verdict)
        return verdict

    def _judge(self) -> Verdict:
        self.publish(force_dense=True)
        verdict = self.validator.judge(self.head.store, self.holdout.samples())
        self.last_verdict = verdict
        return verdict

    def _validated(self, validated: Validated, verdict: Verdict) -> None:
        self.head.publish(validated)
        self.counters.validations += 1
        log.info("head_validated", epoch=self.head.epoch, **_verdict_fields(verdict))

    def _not_passed(self, verdict: Verdict) -> None:
        fields = _verdict_fields(verdict)
        if verdict.outcome is Outcome.FAIL:
            self.roll_back()
            log.warning("head_rolled_back", epoch=self.head.epoch, **fields)
        else:
            self.counters.validations_skipped += 1

    def roll_back(self) -> None:
        """Roll the head back to the validation watermark in a new epoch, and continue from
        the store's state there."""
        store = self.head.store
        self.head.publish(Rollback(store.watermark, self.head.epoch + 1, self.clock_ms()))
        self._adopt_store()
        self.counters.rollbacks += 1

    def _adopt_store(self) -> None:
        self.learner.adopt(self.head.store)
        self._pending = {name: [] for name in self._pending}
        self._dense_changed = False

    # -- checkpoint and restart ------------------------------------------------------------------

    def checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        self.publish(force_dense=True)
        save_checkpoint(self.checkpoint_path, self.state_dict())
        self.counters.checkpoints += 1
        log.debug("trainer_checkpointed", path=str(self.checkpoint_path), steps=self.counters.steps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "learner": self.learner.state_dict(),
            "source": self.source.state_dict(),
            "holdout": self.holdout.state_dict(),
            "split_rng": self.split_rng.bit_generator.state,
            "counters": asdict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.source.load_state_dict(state["source"])
        self.holdout.load_state_dict(state["holdout"])
        self.split_rng.bit_generator.state = state["split_rng"]
        self.counters = TrainerCounters(**state["counters"])

    def resume(self) -> str:
        """Load the checkpoint (if any); if the head holds anything, roll it into a new epoch
        (see module docstring) and continue from the store. Returns 'fresh', 'watermark' or
        'head': where training continues from."""
        state = load_checkpoint(self.checkpoint_path) if self.checkpoint_path else None
        if state is not None:
            self.load_state_dict(state)
        store = self.head.store
        if store.vector.total_seq() == 0:
            if state is not None:  # the store was lost: rows nodes never get would diverge
                log.warning("trainer_store_empty", checkpoint=str(self.checkpoint_path))
                self._adopt_store()
            return "fresh"
        reachable = not store.can_roll_back(store.watermark)
        to, where = (store.watermark, "watermark") if reachable else (store.vector, "head")
        self.head.publish(Rollback(to, self.head.epoch + 1, self.clock_ms()))
        self._adopt_store()
        log.info(
            "trainer_resumed",
            checkpoint=state is not None,
            to=where,
            epoch=self.head.epoch,
            steps=self.counters.steps,
        )
        return where


def _verdict_fields(verdict: Verdict) -> dict[str, float]:
    fields = {}
    for name, metrics in (("head", verdict.head), ("baseline", verdict.baseline)):
        if metrics is not None:
            fields[f"{name}_auc"] = round(metrics.auc, 4)
            fields[f"{name}_logloss"] = round(metrics.logloss, 4)
    return fields


def make_source(config: TrainerConfig) -> BatchSource:
    if config.source == "csv":
        return CsvLogStream(config.csv_path, config.batch_samples)
    return SyntheticStream(StreamSpec.from_config(config))


def build_trainer(
    config: Config, head: Head, device: str | None = None, checkpoint: bool = True
) -> Trainer:
    """The trainer of ``config`` publishing into ``head`` (device: overrides trainer.device)."""
    tc = config.trainer
    spec = LearnerSpec(
        dim=config.store.dim,
        hidden_units=tc.hidden_units,
        embedding_learning_rate=tc.embedding_learning_rate,
        dense_learning_rate=tc.dense_learning_rate,
        embedding_init_std=tc.embedding_init_std,
        seed=tc.seed,
    )
    learner = OnlineLearner(spec, resolve_device(device or tc.device))
    path = Path(config.node.data_dir) / CHECKPOINT_FILE if checkpoint else None
    if tc.publish_journal:  # the record of every published message (p2prec.proof)
        head = JournalHead(head, Path(config.node.data_dir) / JOURNAL_FILE)
    return Trainer(tc, head, make_source(config.trainer), learner, path)
