"""The record of every message the trainer publishes (``trainer.publish_journal``).

``JournalHead`` wraps the trainer's head and appends one JSON line per published message to
``<node.data_dir>/published.jsonl`` *before* publishing it, flushed per line so that it survives
a SIGKILL of the trainer: whatever any node may hold was journaled first. A message journaled
but never sent (the trainer died in between) is fenced by the restart's rollback. After a
``Validated`` or ``Rollback`` a ``head`` line records the state it left (epoch, vector,
watermark, Merkle root): the reliability checker (``p2prec.proof``) compares nodes with it.

Lines (packed versions, see ``p2prec.core.versions``; ``t_s``: Unix seconds; ``pid``: the
trainer process, which changes on a restart):

- ``{"kind": "delta", "epoch", "shards", "versions", "rows", "dense"}``
- ``{"kind": "validated", "epoch", "vector"}``
- ``{"kind": "rollback", "new_epoch", "to"}``
- ``{"kind": "head", "after", "epoch", "vector", "watermark", "root"}``
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

import orjson

from p2prec.model.store import ParamStore
from p2prec.trainer.head import Head, HeadWrapper, Published
from p2prec.wire.messages import ParamDelta, Validated

JOURNAL_FILE = "published.jsonl"  # in node.data_dir


def message_entry(msg: Published, epoch: int) -> dict[str, Any]:
    """The journal line of ``msg``, published by a head at ``epoch``."""
    if isinstance(msg, ParamDelta):
        return {
            "kind": "delta",
            "epoch": epoch,
            "shards": list(msg.shards),
            "versions": list(msg.versions),
            "rows": msg.row_count,
            "dense": bool(msg.dense),
        }
    if isinstance(msg, Validated):
        return {"kind": "validated", "epoch": msg.epoch, "vector": msg.vector.to_list()}
    return {"kind": "rollback", "new_epoch": msg.new_epoch, "to": msg.to.to_list()}


def head_entry(store: ParamStore, epoch: int, after: str) -> dict[str, Any]:
    """The head's state after a control message: what every node must end up equal to."""
    return {
        "kind": "head",
        "after": after,
        "epoch": epoch,
        "vector": store.vector.to_list(),
        "watermark": store.watermark.to_list(),
        "root": store.root.hex(),
    }


class JournalHead(HeadWrapper):
    """A ``Head`` that journals every message before passing it on (see module docstring)."""

    def __init__(self, head: Head, path: Path) -> None:
        super().__init__(head)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("ab")

    def publish(self, msg: Published) -> None:
        self._write(message_entry(msg, self.inner.epoch))
        self.inner.publish(msg)
        if not isinstance(msg, ParamDelta):
            after = "validated" if isinstance(msg, Validated) else "rollback"
            self._write(head_entry(self.inner.store, self.inner.epoch, after))

    def _write(self, entry: dict[str, Any]) -> None:
        line = {**entry, "t_s": round(time.time(), 4), "pid": os.getpid()}
        self._file.write(orjson.dumps(line) + b"\n")
        self._file.flush()  # to the OS per line: survives a SIGKILL of this process

    def close(self) -> None:
        self._file.close()
