"""Prometheus metrics of one app, in a registry of its own (several apps may share a process).

Counters of the driver, the replica and the transport are read at scrape time by a custom
collector (no double bookkeeping); the update-latency histogram is fed from the driver's record
of applied deltas (``NodeDriver.latency_feed``) by the app's ticker and at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2prec.io.node import NodeDriver
from p2prec.serve.lag import Lag

HTTP_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
UPDATE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def http_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "p2prec_http_request_duration_seconds",
        "HTTP request latency, by method, route template and status.",
        ("method", "route", "status"),
        registry=registry,
        buckets=HTTP_BUCKETS_S,
    )


class UpdateLatencyFeed:
    """Observes each newly applied delta's publish -> applied latency exactly once, popping
    them from ``NodeDriver.latency_feed`` (deque appends and pops are atomic: the owner loop
    appends while a serving thread drains)."""

    def __init__(self, driver: NodeDriver, registry: CollectorRegistry) -> None:
        self.driver = driver
        self.histogram = Histogram(
            "p2prec_update_latency_seconds",
            "Trainer publish -> applied here, by the wall clock, per delta from the tree.",
            registry=registry,
            buckets=UPDATE_BUCKETS_S,
        )

    def drain(self) -> int:
        """Observe the latencies appended since the last call; returns how many."""
        feed, observed = self.driver.latency_feed, 0
        while feed:
            try:
                latency_ms = feed.popleft()
            except IndexError:
                break
            self.histogram.observe(max(0.0, latency_ms) / 1000.0)
            observed += 1
        return observed


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _per_class(name: str, doc: str, counters: dict[str, Any]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=("direction", "peer_class"))
    for direction in ("in", "out"):
        for peer_class, value in counters[direction].items():
            family.add_metric((direction, peer_class), value)
    return family


class DriverCollector(Collector):
    """Counters and gauges of a node (or the trainer's publisher), read at scrape time."""

    def __init__(
        self, driver: NodeDriver, lag: Callable[[], Lag], ready: Callable[[], bool]
    ) -> None:
        self.driver = driver
        self.lag = lag
        self.ready = ready

    def collect(self) -> Iterable[Metric]:
        yield from self._transport()
        replica = self.driver.replica
        if replica is None:
            return
        c = replica.counters
        yield _counter("p2prec_deltas_applied", "Deltas applied from the tree.", c.applied)
        yield _counter(
            "p2prec_deltas_repaired", "Deltas and snapshots applied by catch-up.", c.repaired
        )
        yield _counter(
            "p2prec_deltas_rejected", "Deltas or snapshots refused as invalid.", c.rejected
        )
        yield _counter("p2prec_deltas_fenced", "Deltas of a fenced epoch refused.", c.fenced)
        yield _counter("p2prec_rollbacks", "Rollbacks applied.", c.rollbacks)
        yield _counter(
            "p2prec_messages_rejected",
            "Messages failing decoding or signature verification.",
            self.driver.counters.decode_rejected,
        )
        lag = self.lag()
        yield _gauge(
            "p2prec_lag_versions", "Versions peers hold that this node lacks.", lag.versions
        )
        yield _gauge(
            "p2prec_lag_seconds", "Time this node has been behind its peers.", lag.ms / 1000
        )
        yield _gauge("p2prec_ready", "1 when /readyz answers 200.", float(self.ready()))
        yield _gauge("p2prec_epoch", "Epoch this node is on.", replica.fencing.epoch)
        yield _gauge(
            "p2prec_versions", "Sum of the version vector's seqs.", replica.store.vector.total_seq()
        )

    def _transport(self) -> Iterable[Metric]:
        t = self.driver.transport.counters
        yield _per_class(
            "p2prec_transport_bytes",
            "Bytes sent and received by peer class (lan: same datacenter, wan: another).",
            {"in": t.bytes_in, "out": t.bytes_out},
        )
        yield _per_class(
            "p2prec_transport_messages",
            "Messages sent and received by peer class.",
            {"in": t.messages_in, "out": t.messages_out},
        )
        drops = CounterMetricFamily(
            "p2prec_queue_drops", "Messages dropped at a bounded queue.", labels=("queue",)
        )
        drops.add_metric(("transport",), t.queue_drops)
        gap = self.driver.replica.counters.gap_dropped if self.driver.replica else 0
        drops.add_metric(("gap_buffer",), gap)
        yield drops
        yield _counter("p2prec_fault_drops", "Messages discarded by a link fault.", t.fault_drops)
