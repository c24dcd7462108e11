"""The HTTP API of the trainer: ``make_trainer_app(driver, trainer, config)``.

    GET  /healthz          200 {"ok": true}
    GET  /v1/status        epoch, head vector, Merkle root of the head, watermark, samples/s,
                           paused, counters, url, pid
    GET  /metrics          Prometheus exposition
    POST /admin/pause      stop training and publishing (after publishing what is pending,
                           a validation being hashed included)
    POST /admin/resume     continue
    POST /admin/poison     {"steps": N}: train N batches with flipped labels on popular items
    POST /admin/rollback   roll the head back to the validation watermark in a new epoch

``trainer`` is duck-typed (``TrainerControl``): this module never imports torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from p2prec.config import Config
from p2prec.io.node import NodeDriver
from p2prec.log import get_logger
from p2prec.serve.auth import admin_only
from p2prec.serve.lag import Lag
from p2prec.serve.metrics import DriverCollector, http_histogram
from p2prec.serve.middleware import error_middleware, latency_middleware
from p2prec.serve.params import parse_json_object, parse_nonnegative_int, required
from p2prec.serve.responses import error_response, json_response
from p2prec.serve.ticker import ticker

log = get_logger("p2prec.serve")
RATE_WINDOW_S = 1.0  # samples/s is measured over this window
POISON_STEPS_MAX = 1_000_000
#: How long /admin/pause waits for a validation being hashed to publish before it answers.
PAUSE_SETTLE_MAX_S = 30.0


class TrainerControl(Protocol):
    """What the trainer's app needs of ``p2prec.trainer.runtime.Trainer``."""

    counters: Any

    @property
    def paused(self) -> bool: ...
    def pause(self) -> None: ...
    async def settled(self) -> None: ...
    def unpause(self) -> None: ...
    def poison(self, steps: int) -> None: ...
    def roll_back(self) -> None: ...


class SampleRate:
    """Samples trained (and held out) per second over the last ``RATE_WINDOW_S``."""

    def __init__(self) -> None:
        self.per_s = 0.0
        self._last: tuple[float, int] | None = None

    def observe(self, samples: int, now_s: float) -> None:
        if self._last is None:
            self._last = (now_s, samples)
            return
        then_s, then_samples = self._last
        if now_s - then_s >= RATE_WINDOW_S:
            self.per_s = (samples - then_samples) / (now_s - then_s)
            self._last = (now_s, samples)


def samples_seen(trainer: TrainerControl) -> int:
    return int(trainer.counters.samples_trained + trainer.counters.samples_held_out)


class TrainerCollector(Collector):
    def __init__(self, trainer: TrainerControl, rate: SampleRate) -> None:
        self.trainer = trainer
        self.rate = rate

    def collect(self) -> Iterable[Metric]:
        counters: dict[str, int] = asdict(self.trainer.counters)
        for name, value in counters.items():
            yield CounterMetricFamily(f"p2prec_trainer_{name}", f"Trainer {name}.", value=value)
        yield GaugeMetricFamily(
            "p2prec_trainer_samples_per_second", "Samples per second, recent.", self.rate.per_s
        )
        yield GaugeMetricFamily(
            "p2prec_trainer_paused", "1 while paused by /admin/pause.", float(self.trainer.paused)
        )


class TrainerApi:
    def __init__(self, driver: NodeDriver, trainer: TrainerControl, config: Config) -> None:
        self.driver = driver
        self.trainer = trainer
        self.http = config.http
        self.rate = SampleRate()
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_latency = http_histogram(self.registry)
        self.registry.register(DriverCollector(driver, lambda: Lag(0, 0.0, 0), lambda: True))
        self.registry.register(TrainerCollector(trainer, self.rate))

    def sample(self) -> None:
        """Feeds the samples/s window between requests."""
        self.rate.observe(samples_seen(self.trainer), time.monotonic())

    async def healthz(self, _request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def status(self, _request: web.Request) -> web.Response:
        replica = self.driver.replica
        if replica is None:
            return error_response(503, "starting")
        store = replica.store
        base = self.driver.status()
        return json_response(
            {
                "id": base["id"],
                "dc": base["dc"],
                "role": "trainer",
                "addr": base["addr"],
                "url": base["url"],
                "pid": base["pid"],
                "ready": True,
                "epoch": replica.fencing.epoch,
                "merkle_root": store.root.hex(),
                "vector_summary": store.vector.summary(),
                "total_versions": store.vector.total_seq(),
                "vector": store.vector.to_list(),
                "watermark": store.watermark.to_list(),
                "watermark_summary": store.watermark.summary(),
                "lag_versions": 0,
                "lag_ms": 0.0,
                "samples_per_s": round(self.rate.per_s, 1),
                "paused": self.trainer.paused,
                "counters": asdict(self.trainer.counters),
                "members": base["members"],
                "transport": base["transport"],
            }
        )

    async def metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def pause(self, _request: web.Request) -> web.Response:
        self.trainer.pause()
        # A validation being hashed publishes when it ends: answer once it has (bounded), so
        # that the head and watermark answered stay as they are until a resume.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PAUSE_SETTLE_MAX_S):
                await self.trainer.settled()
        self.driver.status_soon()  # checkers wait for a status taken after the pause
        return json_response({"paused": True, **self._head()})

    async def resume(self, _request: web.Request) -> web.Response:
        self.trainer.unpause()
        return json_response({"paused": False, **self._head()})

    async def poison(self, request: web.Request) -> web.Response:
        body = parse_json_object(await request.read())
        steps = parse_nonnegative_int("steps", required(body, "steps"), POISON_STEPS_MAX)
        self.trainer.poison(steps)
        return json_response({"poisoned_steps": steps})

    async def rollback(self, _request: web.Request) -> web.Response:
        self.trainer.roll_back()
        log.warning("admin_rollback", **self._head())
        return json_response({"rolled_back": True, **self._head()})

    def _head(self) -> dict[str, Any]:
        replica = self.driver.replica
        if replica is None:
            return {}
        store = replica.store
        return {
            "epoch": replica.fencing.epoch,
            "merkle_root": store.root.hex(),
            "vector_summary": store.vector.summary(),
        }


def make_trainer_app(
    driver: NodeDriver, trainer: TrainerControl, config: Config
) -> web.Application:
    api = TrainerApi(driver, trainer, config)
    app = web.Application(middlewares=[latency_middleware(api.http_latency), error_middleware()])
    app.cleanup_ctx.append(ticker(api.sample, RATE_WINDOW_S / 4, "p2prec-trainer-http-ticker"))
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.healthz)
    app.router.add_get("/v1/status", api.status)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_post("/admin/pause", admin_only(api.http.admin_token, api.pause))
    app.router.add_post("/admin/resume", admin_only(api.http.admin_token, api.resume))
    app.router.add_post("/admin/poison", admin_only(api.http.admin_token, api.poison))
    app.router.add_post("/admin/rollback", admin_only(api.http.admin_token, api.rollback))
    return app
