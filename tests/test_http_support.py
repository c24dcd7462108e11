"""Shared set-up of the HTTP tests (no tests here): an in-process mesh (trainer publisher and
nodes on real sockets, from test_node_driver) whose steps carry a complete two-tower model,
nodes served over HTTP on free ports, and a small JSON client."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import numpy as np
from test_node_driver import Mesh

from p2prec.config import Config, HttpConfig
from p2prec.io.node import NodeDriver
from p2prec.model.scoring import B1, B2, BIAS, W1, W2
from p2prec.serve.app import make_node_app
from p2prec.serve.server import Server, serve_http
from p2prec.sim.lineage import make_delta

TOKEN = "s3cret-token"
USERS = np.arange(0, 12, dtype=np.int64)  # every model step rewrites these rows
ITEMS = np.arange(100, 140, dtype=np.int64)
HIDDEN_UNITS = 5


def tower_tensors(dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    return {
        W1: normal(dim, HIDDEN_UNITS),
        B1: normal(HIDDEN_UNITS),
        W2: normal(HIDDEN_UNITS, dim),
        B2: normal(dim),
        BIAS: normal(1),
    }


class HttpMesh(Mesh):
    """``Mesh`` whose steps publish rows of every test user and item and a valid tower."""

    def __init__(self, tmp: Any) -> None:
        super().__init__(tmp)
        self.servers: list[Server] = []

    @property
    def head(self) -> NodeDriver:
        assert self.trainer is not None
        return self.trainer

    def publish_model_step(self, created_ms: int = 0) -> None:
        replica = self.head.replica
        assert replica is not None
        store = replica.store
        keys = {"user": USERS, "item": ITEMS}
        step = make_delta(
            store.layout, store.vector.packed, keys, True, self.rng, replica.fencing.epoch
        )
        dense = tower_tensors(store.layout.dim, self.rng)
        self.head.publish(dataclasses.replace(step, dense=dense, created_ms=created_ms))

    def validate_head(self) -> None:
        from p2prec.core.publisher import Publisher

        publisher = self.head.replica
        assert isinstance(publisher, Publisher)
        self.head.publish(publisher.validated_head(0))

    async def serve(
        self, driver: NodeDriver, admin_token: str = TOKEN, serving_thread: bool = True
    ) -> str:
        """Serve ``driver``'s app: on a serving thread (the default, as ``p2prec node``), or
        on the driver's own loop."""
        config = with_http(driver.config, admin_token=admin_token, serving_thread=serving_thread)
        server = await serve_http(
            driver,
            config.http,
            lambda: make_node_app(driver, config),
            threaded=config.http.serving_thread,
        )
        assert server is not None
        self.servers.append(server)
        return server.url

    async def close(self) -> None:
        for server in self.servers:
            await server.stop()
        await super().close()


def with_http(config: Config, **values: Any) -> Config:
    return dataclasses.replace(config, http=dataclasses.replace(HttpConfig(), **values))


class Client:
    """JSON over one aiohttp session; every call returns (status, decoded body)."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, params=params) as response:
            return response.status, await _body(response)

    async def send(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, token: str = ""
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.session.request(
            method, self.url + path, headers=headers, **kwargs
        ) as response:
            return response.status, await _body(response)

    async def text(self, path: str) -> str:
        async with self.session.get(self.url + path) as response:
            assert response.status == 200
            return await response.text()


async def _body(response: aiohttp.ClientResponse) -> Any:
    if response.content_type == "application/json":
        return await response.json()
    return await response.text()
