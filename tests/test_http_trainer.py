"""The trainer's HTTP API in process (TrainerProcess: its driver on real sockets, torch on the
CPU): status, metrics, and the admin calls pause, resume, poison and rollback."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from test_http_support import TOKEN, Client
from test_node_driver import until
from test_trainer_support import TrainerProcess

from p2prec.config import HttpConfig
from p2prec.log import reset_logging
from p2prec.serve.server import serve_http
from p2prec.serve.trainer_app import make_trainer_app
from p2prec.trainer.runtime import Trainer


@asynccontextmanager
async def trainer_with_http(tmp_path: Path, **overrides: Any) -> AsyncIterator[TrainerServed]:
    """A TrainerProcess (``overrides`` of its config) with its HTTP app served, closed after."""
    process = TrainerProcess(tmp_path, **overrides)
    trainer = await process.start()
    config = dataclasses.replace(process.config, http=HttpConfig(admin_token=TOKEN))
    app = make_trainer_app(process.driver, trainer, config)
    server = await serve_http(process.driver, config.http, lambda: app)
    assert server is not None
    try:
        yield TrainerServed(process, trainer, server.url)
    finally:
        await server.stop()
        await process.close()


@dataclass
class TrainerServed:
    process: TrainerProcess
    trainer: Trainer
    url: str


def test_trainer_status_metrics_and_admin_calls(tmp_path: Path) -> None:
    reset_logging()

    async def main() -> None:
        async with trainer_with_http(tmp_path, trainer__validate_every_steps=10) as served:
            running = asyncio.create_task(served.trainer.run())
            try:
                async with aiohttp.ClientSession() as session:
                    await exercise(Client(served.url, session), served.process)
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)

    asyncio.run(main())


async def exercise(client: Client, process: TrainerProcess) -> None:
    trainer = process.trainer
    assert trainer is not None
    store = process.driver.replica.store  # type: ignore[union-attr]
    await until(lambda: trainer.counters.validations >= 1, "a validation")
    assert await client.get("/healthz") == (200, {"ok": True})
    for path in ("/admin/pause", "/admin/resume", "/admin/rollback", "/admin/poison"):
        assert (await client.send("POST", path, {"steps": 1}))[0] == 401, path

    status, paused = await client.send("POST", "/admin/pause", token=TOKEN)
    assert status == 200 and paused["paused"] is True and trainer.paused
    _, answer = await client.get("/v1/status")
    assert answer["paused"] is True and answer["role"] == "trainer"
    assert answer["merkle_root"] == store.root.hex() == paused["merkle_root"]
    assert answer["vector_summary"] == store.vector.summary()
    assert answer["watermark"] == store.watermark.to_list()
    assert answer["url"] == client.url and "samples_per_s" in answer

    epoch = answer["epoch"]
    status, rolled = await client.send("POST", "/admin/rollback", token=TOKEN)
    assert status == 200 and rolled["epoch"] == epoch + 1
    assert store.vector == store.watermark  # back at the last validated state

    status, answer = await client.send("POST", "/admin/poison", {"steps": -3}, token=TOKEN)
    assert (status, answer["param"]) == (400, "steps")
    status, answer = await client.send("POST", "/admin/poison", {"steps": 5}, token=TOKEN)
    assert status == 200 and trainer.poison_switch.active

    steps = trainer.counters.steps
    assert (await client.send("POST", "/admin/resume", token=TOKEN))[0] == 200
    await until(lambda: trainer.counters.steps > steps, "training again")

    families = {f.name for f in text_string_to_metric_families(await client.text("/metrics"))}
    assert {"p2prec_trainer_steps", "p2prec_trainer_samples_per_second"} <= families
    assert {"p2prec_http_request_duration_seconds", "p2prec_transport_bytes"} <= families


def test_a_pause_answers_once_the_validation_being_hashed_has_published(tmp_path: Path) -> None:
    """A validation hashes the head over several loop turns and publishes its ``validated``
    when it ends: /admin/pause answers after that, so the watermark answered is final."""
    reset_logging()

    async def main() -> None:
        async with trainer_with_http(tmp_path, trainer__validate_every_steps=0) as served:
            trainer = served.trainer
            store = served.process.driver.replica.store  # type: ignore[union-attr]
            for _ in range(5):
                trainer.train_step()
            trainer.publish(force_dense=True)
            validations = trainer.counters.validations
            validating = asyncio.create_task(trainer.validate_stepped())
            await until(lambda: not trainer._no_validation_hashing.is_set(), "hashing begun")
            async with aiohttp.ClientSession() as session:
                status, paused = await Client(served.url, session).send(
                    "POST", "/admin/pause", token=TOKEN
                )
            assert status == 200 and paused["paused"] is True
            assert validating.done(), "the pause answered while the head was being hashed"
            assert trainer.counters.validations == validations + 1
            assert store.watermark == store.vector  # the head as validated, nothing after it

    asyncio.run(main())
