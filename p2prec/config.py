"""Configuration: frozen dataclasses with presets (local / lan / wan), loaded from TOML.

Like hashicorp/memberlist's DefaultLocalConfig / DefaultLANConfig / DefaultWANConfig, the presets
differ in timing only. A value comes from, in rising priority: the dataclass default, the
preset, the TOML file, the ``overrides`` mapping. Every key documents itself in its field
metadata (``{"doc": ...}``); ``Config.to_toml_commented()`` renders the effective config with
those docs (``p2prec config show``).

Anything wrong (missing file, TOML syntax, unknown preset or key, wrong type, out-of-range value)
raises ``ConfigError`` whose message starts with the offending key, e.g.
``mesh.gossip_interval_s: expected a number > 0, got -1``.
"""

from __future__ import annotations

import difflib
import math
import re
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Literal,
    TypeVar,
    get_args,
    get_origin,
    get_type_hints,
)

if TYPE_CHECKING:
    from p2prec.wire.limits import WireLimits

T = TypeVar("T")
MiB = 1 << 20
KiB = 1 << 10
DEFAULT_PRESET = "lan"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ConfigError(ValueError):
    """A bad config file or value; the message names the offending key (or file)."""


def _key(
    default: T,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    empty_ok: bool = False,
) -> T:
    """A config key: its default, its doc (rendered by ``config show``) and its numeric range
    (``empty_ok``: a string key that may be ``""``)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "empty_ok": empty_ok}
    return field(default=default, metadata=meta)


# --- value checks ----------------------------------------------------------------------------


def _range_text(meta: Mapping[str, Any]) -> str:
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    if ge is not None and le is not None:
        return f" in {ge}..{le}"
    if gt is not None:
        return f" > {gt}" + (f" and <= {le}" if le is not None else "")
    if ge is not None:
        return f" >= {ge}"
    return f" <= {le}" if le is not None else ""


def _in_range(value: float, meta: Mapping[str, Any]) -> bool:
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    return not (
        (ge is not None and value < ge)
        or (gt is not None and value <= gt)
        or (le is not None and value > le)
    )


def _check_number(key: str, tp: type, meta: Mapping[str, Any], value: Any) -> int | float:
    is_int = tp is int
    expected = ("an integer" if is_int else "a number") + _range_text(meta)
    good_type = isinstance(value, int) if is_int else isinstance(value, int | float)
    if isinstance(value, bool) or not good_type:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if not math.isfinite(value) or not _in_range(value, meta):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    return int(value) if is_int else float(value)


def _check_choice(key: str, choices: tuple[Any, ...], value: Any) -> Any:
    if isinstance(value, str) and value in choices:
        return value
    names = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"{key}: expected one of {names}, got {value!r}")


def _check_str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{key}: expected a list of strings, got {value!r}")


def _coerce(key: str, tp: Any, meta: Mapping[str, Any], value: Any) -> Any:
    """Check ``value`` against the field's type and range; return it in canonical form."""
    origin = get_origin(tp)
    if origin is Literal:
        return _check_choice(key, get_args(tp), value)
    if origin is tuple:
        return _check_str_list(key, value)
    if tp is int or tp is float:
        return _check_number(key, tp, meta, value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str) and (value or meta.get("empty_ok")):
            return value
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    raise TypeError(f"{key}: unsupported config type {tp!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a dataclass (annotations are strings here), cached."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


# --- sections --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Section:
    """Base of every section: checks types and ranges of all keys on construction."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            value = _coerce(self._name(f.name), hints[f.name], f.metadata, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self.check()

    def _name(self, key: str) -> str:
        return f"{self.SECTION}.{key}"

    def check(self) -> None:
        """Constraints between keys of the section (overridden where there are any)."""


@dataclass(frozen=True)
class NodeConfig(_Section):
    """Identity of this process in the mesh."""

    SECTION: ClassVar[str] = "node"

    id: str = _key("node-1", "Node id, unique in the mesh; bound into every log line.")
    dc: str = _key("dc1", "Datacenter of this node: one WAN copy per datacenter, then a tree.")
    data_dir: str = _key(
        "state/node-1",
        "Directory for snapshots and logs (relative to the working directory). "
        "Default: state/<node.id>.",
    )
    role: Literal["node", "trainer"] = _key(
        "node", "'node' serves and relays parameters; 'trainer' trains and publishes them."
    )
    heap_keep_mib: int = _key(
        256,
        "Freed heap memory the process keeps for reuse instead of returning it to the kernel "
        "(glibc's malloc trim threshold; blocks up to 32 MiB then come from the heap). Fresh "
        "pages cost a fault each, and in a VM that reports freed memory to its host one there "
        "too (2.3 s per GiB measured). 0: the C library's defaults.",
        ge=0,
        le=1 << 11,
    )
    release_written_pages: bool = _key(
        True,
        "Hand the log's and the snapshots' written pages to writeback and drop them from the "
        "page cache (as PostgreSQL does its WAL segments): they are read back only at a "
        "restart, and left cached they filled memory at the log's rate while the kernel's "
        "share of the CPU tripled (measured: io/pagecache.py). false: the kernel decides.",
    )

    def check(self) -> None:
        for key in ("id", "dc"):
            value = getattr(self, key)
            if not _NAME_RE.match(value):
                raise ConfigError(
                    f"{self._name(key)}: expected 1-64 of [A-Za-z0-9._-] "
                    f"starting with a letter or digit, got {value!r}"
                )


@dataclass(frozen=True)
class StoreConfig(_Section):
    """The parameter store: sharded embedding tables and bounded history."""

    SECTION: ClassVar[str] = "store"

    row_shards: int = _key(
        64,
        "Shards the rows are hashed into: the unit of versioning, Merkle leaves and catch-up. "
        "Same on the trainer and every node.",
        ge=1,
        le=65536,
    )
    dim: int = _key(
        64, "Embedding dimension (values per row); same on every node.", ge=1, le=1 << 16
    )
    tables: tuple[str, ...] = _key(
        ("user", "item"), "Embedding table names: non-empty, unique identifiers."
    )
    dtype: Literal["float32", "float16"] = _key(
        "float32", "Element type of stored rows ('float16' halves memory and wire bytes)."
    )
    initial_rows: int = _key(
        1024,
        "Row slots per table at start; tables grow beyond it by doubling, a copy of every row "
        "that stalls the node's loop (tens of ms at a million rows). A slot holds a row "
        "version: size it for the ids you expect plus the unvalidated tail kept for undo "
        "(up to undo_rows_max).",
        ge=0,
        le=1 << 31,
    )
    undo_rows_max: int = _key(
        4_000_000,
        "Rows of the unvalidated tail kept for rollback; past it the oldest undo is dropped "
        "and a rollback that far back needs catch-up from peers.",
        ge=0,
    )
    changelog_rows_max: int = _key(
        4_000_000,
        "Rows of change history kept for incremental catch-up; a peer further behind gets "
        "whole shards.",
        ge=0,
    )

    def check(self) -> None:
        key = self._name("tables")
        if not self.tables:
            raise ConfigError(f"{key}: expected at least one table, got []")
        if len(set(self.tables)) != len(self.tables):
            raise ConfigError(f"{key}: table names must be unique, got {list(self.tables)!r}")
        for name in self.tables:
            if not _TABLE_RE.match(name):
                raise ConfigError(f"{key}: expected identifiers, got {name!r}")


@dataclass(frozen=True)
class WireConfig(_Section):
    """Bounds on every message a peer may send (bad peer input is refused, never trusted)."""

    SECTION: ClassVar[str] = "wire"

    max_frame_bytes: int = _key(
        64 * MiB,
        "Largest payload buffer (one table's rows, one dense tensor), in bytes.",
        ge=KiB,
        le=1 << 31,
    )
    max_frames: int = _key(
        256, "Most frames in one message (header and signature included).", ge=2, le=65536
    )
    max_header_bytes: int = _key(256 * KiB, "Largest message header, in bytes.", ge=KiB, le=1 << 31)
    max_message_bytes: int = _key(
        256 * MiB, "Largest message, all frames together, in bytes.", ge=KiB, le=1 << 33
    )
    max_vector_len: int = _key(
        65536,
        "Longest version vector (row shards + the dense shard), and most shards one delta "
        "may step.",
        ge=1,
        le=1 << 24,
    )
    max_tables: int = _key(64, "Most embedding tables in one delta.", ge=1, le=65536)
    max_dense: int = _key(64, "Most dense tensors in one delta.", ge=1, le=65536)

    def check(self) -> None:
        for key in ("max_frame_bytes", "max_header_bytes"):
            if getattr(self, key) > self.max_message_bytes:
                raise ConfigError(
                    f"{self._name(key)}: must not exceed wire.max_message_bytes "
                    f"({self.max_message_bytes}), got {getattr(self, key)}"
                )

    def limits(self) -> WireLimits:
        """The codec's ``p2prec.wire.limits.WireLimits`` with these values."""
        from p2prec.wire.limits import WireLimits

        return WireLimits(
            max_frame_bytes=self.max_frame_bytes,
            max_frames=self.max_frames,
            max_header_bytes=self.max_header_bytes,
            max_message_bytes=self.max_message_bytes,
            max_vector_len=self.max_vector_len,
            max_tables=self.max_tables,
            max_dense=self.max_dense,
        )


def _check_seed(key: str, seed: str) -> None:
    node_id, _, addr = seed.rpartition("@")
    host, _, port = addr.rpartition(":")
    if not node_id or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected 'node_id@host:port' entries, got {seed!r}")


def parse_seed(seed: str) -> tuple[str, str]:
    """``'node_id@host:port'`` -> ``(node_id, 'host:port')`` (the id names its CURVE key)."""
    node_id, _, addr = seed.rpartition("@")
    return node_id, addr


@dataclass(frozen=True)
class MeshConfig(_Section):
    """SWIM membership, gossip and the dissemination tree (defaults: the 'lan' preset)."""

    SECTION: ClassVar[str] = "mesh"

    gossip_interval_s: float = _key(
        0.2, "Seconds between gossip rounds (membership news, Merkle roots).", gt=0
    )
    gossip_nodes: int = _key(3, "Peers each gossip round is sent to.", ge=1, le=64)
    probe_interval_s: float = _key(1.0, "Seconds between SWIM failure-detection probes.", gt=0)
    probe_timeout_s: float = _key(
        0.5,
        "Seconds to wait for a probe's ack before indirect probes; below probe_interval_s.",
        gt=0,
    )
    suspicion_mult: int = _key(
        4,
        "Suspicion timeout = suspicion_mult * probe_interval_s * log10(cluster size), "
        "before a suspect is declared dead.",
        ge=1,
        le=100,
    )
    dead_node_reclaim_s: float = _key(
        30.0, "Seconds before a dead node's id may rejoin from a new address.", ge=0
    )
    rejoin_interval_s: float = _key(
        10.0, "Seconds between attempts to rejoin the seeds while cut off from the mesh.", gt=0
    )
    fanout: int = _key(4, "Children per node in the k-ary dissemination tree.", ge=1, le=64)
    seeds: tuple[str, ...] = _key(
        (),
        "Peers to join through, as 'node_id@host:port' (the id names the peer's CURVE "
        "public key in keys.curve_dir).",
    )
    bind_host: str = _key("127.0.0.1", "Address the mesh socket binds to.")
    advertise_host: str = _key(
        "",
        "Host peers reach this node at (its name on their network); empty: bind_host. "
        "Required when bind_host is a wildcard such as 0.0.0.0 (containers).",
        empty_ok=True,
    )
    port: int = _key(0, "Port the mesh socket binds to; 0 picks a free one.", ge=0, le=65535)
    anti_entropy_interval_s: float = _key(
        5.0, "Seconds between Merkle-root comparisons with a random peer (repairs drops).", gt=0
    )
    queue_max: int = _key(
        1024,
        "Bound of every per-peer queue, in messages; overflow is a counted drop that "
        "anti-entropy repairs.",
        ge=1,
        le=1 << 20,
    )
    shard_groups: int = _key(
        4, "Shard groups, one dissemination tree each (spreads relay work).", ge=1, le=4096
    )
    publisher_id: str = _key("trainer", "Member id of the trainer (never part of a tree).")
    repair_grace_s: float = _key(
        0.5,
        "Seconds a shard may lag a peer before it is pulled (a delta may be in flight).",
        gt=0,
    )
    request_timeout_s: float = _key(
        2.0, "Seconds before an unanswered catch-up request may be sent again.", gt=0
    )
    wan_sync_share: float = _key(
        0.1, "Share of anti-entropy digests sent to another datacenter.", ge=0, le=1
    )
    delta_log_bytes_max: int = _key(
        256 << 20,
        "Bytes of signed deltas kept in memory to serve incremental catch-up; must exceed "
        "the unvalidated tail (older gaps are repaired with verified snapshots).",
        ge=1,
    )
    gap_buffer_max: int = _key(
        256, "Deltas held while an earlier one is missing (overflow: counted drop).", ge=1
    )
    checkpoint_interval_s: float = _key(
        10.0, "Seconds between checkpoints of changed shards to node.data_dir.", gt=0
    )
    checkpoint_log_ratio: float = _key(
        1.0,
        "A due checkpoint waits until the log written since the last one holds this many "
        "times the store's bytes (as Redis rewrites its AOF), so checkpoint work stays "
        "proportional to what was written; 0: every interval. Each node jitters it +-50% "
        "per checkpoint, so members applying one stream do not all rewrite at once.",
        ge=0,
    )
    checkpoint_log_min_bytes: int = _key(
        64 << 20,
        "...and holds at least this many bytes (as Redis's auto-aof-rewrite-min-size): a "
        "small store is not rewritten after every few deltas; a restart replays at most about "
        "this much log. Ignored when checkpoint_log_ratio is 0.",
        ge=0,
    )
    checkpoint_build_mib_s: float = _key(
        64.0,
        "Snapshot MiB a checkpoint builds per second (as RocksDB's rate limiter paces its "
        "background writes): at full speed, members of one host checkpointing together held "
        "both its cores and every delta waited. Keep it above the rate the log grows, or "
        "checkpoints fall behind it; 0: unlimited.",
        ge=0,
    )
    checkpoint_turns_dir: str = _key(
        "",
        "A directory the members of one host share (p2prec up and the local process meshes "
        "set one under their root): at most checkpoint_turns of them write a checkpoint at a "
        "time, each holding an flock on a file there (the kernel drops it if the member dies); "
        "a due checkpoint waits for a turn. Empty: no turns, each member alone.",
        empty_ok=True,
    )
    checkpoint_turns: int = _key(
        2, "Members of one checkpoint_turns_dir checkpointing at a time.", ge=1
    )
    checkpoint_sched_idle: bool = _key(
        True,
        "Build and write checkpoints on a thread under Linux's SCHED_IDLE (as RocksDB lowers "
        "its compaction threads), below replication: on a busy host a delta's path preempts "
        "them and a checkpoint takes longer; one that falls behind the log (the next is "
        "already due) goes on at the replication threads' priority. false: always that.",
    )
    wan_uplink_mbit: float = _key(
        0.0,
        "This host's WAN uplink in Mbit/s: every send to a member of another datacenter "
        "waits in one FIFO for its serialisation delay (bytes / rate); 0: unlimited. Models "
        "a bounded uplink when the whole mesh shares one host (benchmarks, chaos).",
        ge=0,
    )

    def check(self) -> None:
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ConfigError(
                f"{self._name('probe_timeout_s')}: must be below mesh.probe_interval_s "
                f"({self.probe_interval_s}), got {self.probe_timeout_s}"
            )
        for seed in self.seeds:
            _check_seed(self._name("seeds"), seed)


@dataclass(frozen=True)
class LogConfig(_Section):
    """Structured logs (structlog)."""

    SECTION: ClassVar[str] = "log"

    format: Literal["console", "json"] = _key(
        "console", "'json': one JSON object per line (production); 'console': readable."
    )
    level: Literal["debug", "info", "warning", "error"] = _key(
        "info", "Lowest level written: debug, info, warning or error."
    )


@dataclass(frozen=True)
class KeysConfig(_Section):
    """Key files (relative paths are relative to the working directory)."""

    SECTION: ClassVar[str] = "keys"

    trainer_public_key: str = _key(
        "keys/trainer.pub", "Trainer's Ed25519 public key: nodes verify every update with it."
    )
    trainer_signing_key: str = _key(
        "keys/trainer.key", "Trainer's Ed25519 private key (mode 0600); only the trainer reads it."
    )
    curve_dir: str = _key("keys/curve", "Directory of ZeroMQ CURVE key pairs for transport.")


@dataclass(frozen=True)
class TrainerConfig(_Section):
    """The torch trainer (``p2prec trainer``): model, click stream, publishing cadence,
    validation and rollback. Read by the trainer process only."""

    SECTION: ClassVar[str] = "trainer"

    seed: int = _key(
        0,
        "Seed of the synthetic stream, the holdout split and new embedding rows: two runs "
        "with the same seed publish identical deltas.",
        ge=0,
    )
    source: Literal["synthetic", "csv"] = _key(
        "synthetic", "Click stream: 'synthetic' (built in, seeded) or 'csv' (trainer.csv_path)."
    )
    csv_path: str = _key(
        "interactions.csv",
        "Interaction log replayed when trainer.source = 'csv': lines 'user,item,label,timestamp' "
        "(int64 ids, label 0 or 1, timestamp in seconds), optional header line.",
    )
    device: Literal["auto", "cpu", "cuda"] = _key(
        "auto", "Torch device: 'auto' uses CUDA when present, the CPU otherwise."
    )
    batch_samples: int = _key(256, "Samples per training step (mini-batch).", ge=1, le=1 << 20)
    hidden_units: int = _key(
        64, "Width of the hidden layer of the user tower MLP.", ge=1, le=1 << 14
    )
    embedding_learning_rate: float = _key(
        0.05, "Adagrad learning rate of the embedding rows.", gt=0, le=10
    )
    dense_learning_rate: float = _key(
        0.003, "Adam learning rate of the dense (MLP) weights.", gt=0, le=10
    )
    embedding_init_std: float = _key(
        0.05, "Standard deviation of the random initial value of a new embedding row.", ge=0
    )
    publish_every_steps: int = _key(
        1,
        "Fewest training steps coalesced into one publication: a row touched several times "
        "is sent once, with its latest value.",
        ge=1,
        le=1_000_000,
    )
    publish_interval_s: float = _key(
        0.05,
        "Fewest wall-clock seconds between publications (coalescing bounds the cost per "
        "sample); both this and publish_every_steps must be reached. 0: step cadence only, "
        "which makes the deltas a function of the seed alone.",
        ge=0,
        le=60,
    )
    dense_every_steps: int = _key(
        10,
        "Steps between publications of the dense weights (sent only when they changed).",
        ge=1,
        le=1_000_000,
    )
    validate_every_steps: int = _key(
        100,
        "Steps between validations of the published head: Validated, or Rollback when worse "
        "than the last validated state (0: never validate).",
        ge=0,
    )
    holdout_share: float = _key(
        0.05, "Share of the stream's samples held out (never trained) for validation.", gt=0, le=0.5
    )
    holdout_samples_max: int = _key(
        4096, "Most recent held-out samples the validator scores, in samples.", ge=16
    )
    rollback_auc_drop_max: float = _key(
        0.02,
        "Largest AUC drop (head vs last validated state, same held-out samples) that still "
        "passes; a larger drop rolls the head back.",
        ge=0,
        le=1,
    )
    rollback_logloss_rise_max: float = _key(
        0.05,
        "Largest log-loss rise (nats per sample, head vs last validated state) that still "
        "passes; a larger rise rolls the head back.",
        ge=0,
    )
    checkpoint_every_steps: int = _key(
        1000,
        "Steps between checkpoints of the torch state to <node.data_dir>/trainer.pt "
        "(also written on a clean stop).",
        ge=1,
    )
    samples_per_s_max: float = _key(
        2000.0,
        "Wall-clock bound on trained samples per second, so the trainer leaves CPU to the "
        "other processes of a host (0: unbounded).",
        ge=0,
    )
    stream_samples_per_s: float = _key(
        1000.0, "Synthetic stream: impressions per second of stream time.", gt=0
    )
    stream_new_users_per_s: float = _key(
        5.0, "Synthetic stream: new users per second of stream time.", ge=0
    )
    stream_new_items_per_s: float = _key(
        1.0, "Synthetic stream: new items per second of stream time.", ge=0
    )
    stream_users_max: int = _key(
        10_000, "Synthetic stream: active users kept; the oldest retire beyond it.", ge=16
    )
    stream_items_max: int = _key(
        1_000, "Synthetic stream: active items kept; the least popular retire beyond it.", ge=16
    )
    stream_trend_share: float = _key(
        0.3, "Synthetic stream: share of new items that trend (rise, peak, fade).", ge=0, le=1
    )
    stream_trend_peak_s: float = _key(
        60.0,
        "Synthetic stream: stream seconds from a trending item's appearance to its peak.",
        gt=0,
    )
    stream_drift_per_s: float = _key(
        0.02,
        "Synthetic stream: interest drift, the standard deviation per sqrt(stream second) of "
        "the random walk of a user's (unit) interest vector.",
        ge=0,
    )
    stream_latent_dim: int = _key(
        16, "Synthetic stream: dimension of the hidden user interests and item topics.", ge=1
    )
    poison_popular_items: int = _key(
        50,
        "Items the poison switch treats as popular (the most frequent in recent samples); "
        "their labels are flipped while poisoned.",
        ge=1,
    )
    publish_journal: bool = _key(
        False,
        "Append one JSON line per published delta, validation and rollback to "
        "<node.data_dir>/published.jsonl, flushed per line (the reliability suite's record "
        "of what was published; it grows without bound: tests and audits only).",
    )

    def check(self) -> None:
        if self.source == "csv" and not self.csv_path.strip():
            raise ConfigError(f"{self._name('csv_path')}: expected a file path, got ''")


@dataclass(frozen=True)
class HttpConfig(_Section):
    """The HTTP API of a node or the trainer (aiohttp): queries, status, metrics, admin."""

    SECTION: ClassVar[str] = "http"

    enabled: bool = _key(True, "Serve the HTTP API (false: no HTTP server in this process).")
    host: str = _key("127.0.0.1", "Address the HTTP server binds to.")
    port: int = _key(
        0,
        "Port of the HTTP server; 0 picks a free one (status.json and /v1/status give the URL).",
        ge=0,
        le=65535,
    )
    admin_token: str = _key(
        "",
        "Bearer token of the /admin/* calls (link faults, pause, rollback...); '' refuses "
        "every admin call with 401.",
        empty_ok=True,
    )
    ready_lag_ms_max: float = _key(
        5000.0,
        "/readyz answers 503 while this node lags the newest state its peers report by more "
        "than this many milliseconds.",
        ge=0,
    )
    serving_thread: bool = _key(
        True,
        "A node answers HTTP on a thread and event loop of its own, reading the store under "
        "the driver's state lock, so a query waits for at most one store change, not for a "
        "delta's receive, verification and persistence (false: on the replication loop).",
    )
    replication_nice: int = _key(
        19,
        "`p2prec node` with a serving thread: raise the nice value of every other thread "
        "(replication, ZeroMQ I/O, disk writers) by this much, so a query preempts them on a "
        "busy CPU; they get what queries and other work leave (a node that falls behind "
        "says so in /readyz). Not role trainer: a publisher's replication is the root of "
        "every delta's path. 0: equal priority.",
        ge=0,
        le=19,
    )
    gil_switch_interval_ms: float = _key(
        0.05,
        "`p2prec node` with a serving thread: Python's GIL switch interval "
        "(sys.setswitchinterval; Python's default is 5 ms): how long a query waits for the "
        "interpreter while replication code runs, each time it comes back from I/O.",
        gt=0,
        le=100,
    )


# --- presets ---------------------------------------------------------------------------------

#: Per-section overrides of the dataclass defaults, by preset name. Timing only, as memberlist.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # One host, loopback (RTT well under 1 ms): tests, the simulator, local dev meshes.
    # Like memberlist's DefaultLocalConfig: a dead process is noticed within a second or two.
    "local": {
        "mesh": {
            "gossip_interval_s": 0.1,
            "probe_interval_s": 0.5,
            "probe_timeout_s": 0.2,
            "suspicion_mult": 3,
            "dead_node_reclaim_s": 5.0,
            "rejoin_interval_s": 2.0,
            "anti_entropy_interval_s": 1.0,
        },
    },
    # One datacenter (RTT about 1 ms): exactly the dataclass defaults, like memberlist's
    # DefaultLANConfig (probe every 1 s with a 0.5 s timeout, gossip every 0.2 s to 3 peers).
    "lan": {},
    # Across datacenters (RTT 10-300 ms, some loss): like memberlist's DefaultWANConfig.
    # Slower probes and longer suspicion avoid false deaths from WAN jitter.
    "wan": {
        "mesh": {
            "gossip_interval_s": 0.5,
            "gossip_nodes": 4,
            "probe_interval_s": 5.0,
            "probe_timeout_s": 3.0,
            "suspicion_mult": 6,
            "dead_node_reclaim_s": 120.0,
            "rejoin_interval_s": 30.0,
            "anti_entropy_interval_s": 10.0,
        },
    },
}


# --- the whole config ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Effective configuration of one process: one frozen dataclass per section."""

    preset: str = field(
        default=DEFAULT_PRESET,
        metadata={
            "doc": "Preset the values start from: local | lan | wan (they differ in timing). "
            "load_config applies it before the file's own keys."
        },
    )
    node: NodeConfig = field(default_factory=NodeConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    log: LogConfig = field(default_factory=LogConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    def __post_init__(self) -> None:
        _check_preset(self.preset)
        # A version vector has one entry per row shard plus the dense shard.
        if self.store.row_shards + 1 > self.wire.max_vector_len:
            raise ConfigError(
                f"store.row_shards: must stay below wire.max_vector_len "
                f"({self.wire.max_vector_len}; one more entry is the dense shard), "
                f"got {self.store.row_shards}"
            )
        if len(self.store.tables) > self.wire.max_tables:
            raise ConfigError(
                f"store.tables: at most wire.max_tables ({self.wire.max_tables}) tables, "
                f"got {len(self.store.tables)}"
            )

    def wire_limits(self) -> WireLimits:
        """The codec's limits (``p2prec.wire.limits.WireLimits``)."""
        return self.wire.limits()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples): JSON- and TOML-friendly."""
        out: dict[str, Any] = _lists(asdict(self))
        return out

    def to_toml_commented(self) -> str:
        """The effective config as TOML, each key preceded by its doc; loads back unchanged."""
        return render_toml(self)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    return value


def _check_preset(name: Any) -> str:
    if isinstance(name, str) and name in PRESETS:
        return name
    raise ConfigError(f"preset: unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")


def section_classes() -> dict[str, type[_Section]]:
    """Section name -> dataclass, in file order."""
    hints = _hints(Config)
    return {f.name: hints[f.name] for f in fields(Config) if f.name != "preset"}


# --- rendering -------------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}"  # TOML allows 4_000_000
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")


def _comment(doc: str) -> list[str]:
    return ["# " + line for line in textwrap.wrap(doc, width=96)]


def render_toml(config: Config) -> str:
    """``config`` as TOML with each key preceded by its doc comment."""
    preset_field = next(f for f in fields(config) if f.name == "preset")
    lines = ["# p2prec configuration (effective values).", ""]
    lines += [*_comment(preset_field.metadata["doc"]), f"preset = {_toml_value(config.preset)}"]
    for name in section_classes():
        section = getattr(config, name)
        lines += ["", *_comment(type(section).__doc__ or name), f"[{name}]"]
        for f in fields(section):
            lines += [
                *_comment(f.metadata["doc"]),
                f"{f.name} = {_toml_value(getattr(section, f.name))}",
            ]
    return "\n".join(lines) + "\n"


# --- loading ---------------------------------------------------------------------------------


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, anything else in ``extra`` replaces."""
    out = dict(base)
    for key, value in extra.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _expand_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"mesh.port": 7000}`` -> ``{"mesh": {"port": 7000}}``; nested mappings pass through."""
    out: dict[str, Any] = {}
    for dotted, value in overrides.items():
        nested: Any = value
        for part in reversed(dotted.split(".")[1:]):
            nested = {part: nested}
        out = _merge(out, {dotted.split(".")[0]: nested})
    return out


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fp:
            return tomllib.load(fp)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (or give a preset: {', '.join(sorted(PRESETS))})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None


def _read_source(source: str | Path | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, str) and source in PRESETS:
        return {"preset": source}
    return _read_file(Path(source))


def _unknown_key(section: str, key: str, known: list[str]) -> ConfigError:
    name = f"{section}.{key}" if section else key
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{name}: unknown key{hint}")


def _build_section(name: str, cls: type[_Section], raw: Any) -> _Section:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: expected a table, got {raw!r}")
    known = [f.name for f in fields(cls)]
    for key in raw:
        if key not in known:
            raise _unknown_key(name, key, known)
    return cls(**raw)


def _derive_defaults(raw: dict[str, Any]) -> None:
    """Defaults that follow other keys: node.data_dir = state/<node.id>."""
    node = raw.get("node")
    if isinstance(node, Mapping) and "data_dir" not in node and isinstance(node.get("id"), str):
        raw["node"] = {**node, "data_dir": f"state/{node['id']}"}


def build_config(raw: Mapping[str, Any]) -> Config:
    """A ``Config`` from a parsed TOML document (``preset`` applied, then its keys)."""
    data = dict(raw)
    preset = _check_preset(data.pop("preset", DEFAULT_PRESET))
    data = _merge(PRESETS[preset], data)
    _derive_defaults(data)
    classes = section_classes()
    for key in data:
        if key not in classes:
            raise _unknown_key("", key, ["preset", *classes])
    sections: dict[str, Any] = {
        n: _build_section(n, c, data.get(n, {})) for n, c in classes.items()
    }
    return Config(preset=preset, **sections)


def load_config(
    source: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Load the effective config.

    ``source``: a TOML file, a preset name (``local``, ``lan``, ``wan``) or None (defaults,
    the ``lan`` preset). A file may start from a preset with a top-level ``preset = "wan"``.
    ``overrides``: highest priority; dotted keys (``{"mesh.port": 7000}``) or nested tables.
    """
    data = _read_source(source)
    if overrides:
        data = _merge(data, _expand_overrides(overrides))
    return build_config(data)
