"""The HTTP API of an inference node: ``make_node_app(driver, config)``.

GET  /healthz            200 {"ok": true} while the process runs
GET  /readyz             200 once the node holds a model and lags by <= http.ready_lag_ms_max
GET  /v1/recommend       ?user=ID&k=N[&consistency=latest|validated]
POST /v1/score           {"user": ID, "items": [ID, ...], "consistency": ...}
GET  /v1/status          identity, versions, watermark, lag, peers, tree place, counters
GET  /metrics            Prometheus exposition
POST /admin/link-fault   {"target": ADDR | PREFIX | "dc:NAME", "drop": bool, "delay_ms": N,
                         "rate_kbit": N (this node's WAN uplink; target then optional)}
DELETE /admin/link-fault clear every link fault, the uplink back to mesh.wan_uplink_mbit

The handlers may run on a serving thread (``http.serving_thread``): every read of the replica
holds the driver's ``state_lock`` (the owner loop holds it while it changes the replica), and
admin calls run on the driver's loop (``NodeDriver.call_in_owner``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from p2prec.config import Config
from p2prec.core.replica import Replica
from p2prec.io.node import NodeDriver
from p2prec.model.scoring import ModelUnavailable
from p2prec.serve import queries
from p2prec.serve.admin import LinkFaults
from p2prec.serve.auth import admin_only
from p2prec.serve.cache import ModelViews
from p2prec.serve.lag import LAG_SAMPLE_INTERVAL_S, Lag, LagTracker
from p2prec.serve.metrics import DriverCollector, UpdateLatencyFeed, http_histogram
from p2prec.serve.middleware import error_middleware, latency_middleware, query_middleware
from p2prec.serve.nodeview import Readiness, node_status, readiness
from p2prec.serve.params import (
    K_DEFAULT,
    parse_consistency,
    parse_id,
    parse_items,
    parse_json_object,
    parse_k,
    required,
)
from p2prec.serve.responses import error_response, json_response
from p2prec.serve.ticker import ticker


class NodeApi:
    """The handlers of one node's app, and the state they share."""

    def __init__(self, driver: NodeDriver, config: Config) -> None:
        self.driver = driver
        self.http = config.http
        self.lag_tracker = LagTracker()
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_latency = http_histogram(self.registry)
        self.updates = UpdateLatencyFeed(driver, self.registry)
        self.registry.register(DriverCollector(driver, self.lag, lambda: self.readiness().ready))
        self.faults = LinkFaults(driver)
        self.views = ModelViews()

    def lag(self) -> Lag:
        """The lag now (the caller holds the state lock)."""
        return self.lag_tracker.observe(self.driver.replica)

    def readiness(self) -> Readiness:
        """Readiness now (the caller holds the state lock)."""
        return readiness(self.driver, self.lag(), self.http.ready_lag_ms_max)

    def sample(self) -> None:
        """Samples the lag and feeds the update histogram between requests."""
        with self.driver.state_lock:
            self.lag()
        self.updates.drain()

    # -- handlers ---------------------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return json_response({"ok": True})

    async def readyz(self, _request: web.Request) -> web.Response:
        with self.driver.state_lock:
            ready = self.readiness()
        if ready.ready:
            return json_response({"ready": True})
        return json_response({"ready": False, "reason": ready.reason}, 503)

    def _answer(self, query: Callable[[Replica], dict[str, Any]]) -> web.Response:
        """``query`` over the replica, or 503 while there is no model to read. The query
        reads under the state lock: one model state, never a delta half applied."""
        with self.driver.state_lock:
            replica = self.driver.replica
            if replica is None or replica.store.vector.total_seq() == 0:
                return error_response(503, "no model yet")
            try:
                body = query(replica)
            except ModelUnavailable as exc:
                return error_response(503, f"no model for this read: {exc}")
        return json_response(body)

    async def recommend(self, request: web.Request) -> web.Response:
        query = request.query
        user = parse_id("user", required(query, "user"))
        k = parse_k(query.get("k", K_DEFAULT))
        consistency = parse_consistency(query.get("consistency", "latest"))
        return self._answer(
            lambda replica: queries.recommend(replica, self.views, user, k, consistency)
        )

    async def score(self, request: web.Request) -> web.Response:
        body = parse_json_object(await request.read())
        user = parse_id("user", required(body, "user"))
        items = parse_items(required(body, "items"))
        consistency = parse_consistency(body.get("consistency", "latest"))
        return self._answer(lambda replica: queries.score(replica, user, items, consistency))

    async def status(self, _request: web.Request) -> web.Response:
        with self.driver.state_lock:
            if self.driver.replica is None:
                return error_response(503, "starting")
            lag = self.lag()
            ready = readiness(self.driver, lag, self.http.ready_lag_ms_max)
            body = node_status(self.driver, lag, ready)
        return json_response(body)

    async def metrics(self, _request: web.Request) -> web.Response:
        self.updates.drain()
        with self.driver.state_lock:  # the collector reads the replica
            body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_node_app(driver: NodeDriver, config: Config) -> web.Application:
    api = NodeApi(driver, config)
    middlewares = [latency_middleware(api.http_latency), error_middleware()]
    if not config.http.serving_thread:  # queries share the replication loop: it yields more
        middlewares.insert(0, query_middleware(driver.transport.note_query))
    app = web.Application(middlewares=middlewares)
    app.cleanup_ctx.append(ticker(api.sample, LAG_SAMPLE_INTERVAL_S, "p2prec-http-ticker"))
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/v1/recommend", api.recommend)
    app.router.add_post("/v1/score", api.score)
    app.router.add_get("/v1/status", api.status)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_post("/admin/link-fault", admin_only(api.http.admin_token, api.faults.set_fault))
    app.router.add_delete("/admin/link-fault", admin_only(api.http.admin_token, api.faults.clear))
    return app
