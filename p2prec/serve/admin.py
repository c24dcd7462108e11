"""Node admin calls: link faults for chaos (``Transport.set_link_fault``)."""

from __future__ import annotations

from aiohttp import web

from p2prec.io.node import NodeDriver
from p2prec.log import get_logger
from p2prec.serve.params import (
    BadParam,
    parse_bool,
    parse_json_object,
    parse_nonnegative_int,
    required,
)
from p2prec.serve.responses import json_response

log = get_logger("p2prec.serve")
DELAY_MS_MAX = 60_000
DC_PREFIX = "dc:"


class LinkFaults:
    """``POST`` sets a fault on links to a peer address, an address prefix, or every member of
    a datacenter (``dc:NAME``, resolved through this node's membership view); ``DELETE``
    clears them all."""

    def __init__(self, driver: NodeDriver) -> None:
        self.driver = driver

    def resolve(self, target: object) -> list[str]:
        if not isinstance(target, str) or not target.strip():
            raise BadParam(
                "target", f"target: expected an address, prefix or dc:NAME, got {target!r}"
            )
        if not target.startswith(DC_PREFIX):
            return [target]
        dc = target[len(DC_PREFIX) :]
        replica = self.driver.replica
        if replica is None:
            raise BadParam("target", "target: this node has not started its mesh yet")
        members = replica.membership.alive_members()
        addrs = sorted(m.addr for m in members if m.dc == dc and m.node_id != replica.node_id)
        if not addrs:
            raise BadParam("target", f"target: no known member in datacenter {dc!r}")
        return addrs

    async def set_fault(self, request: web.Request) -> web.Response:
        body = parse_json_object(await request.read())
        addrs = self.resolve(required(body, "target"))
        drop = parse_bool("drop", body.get("drop", False))
        delay_ms = parse_nonnegative_int("delay_ms", body.get("delay_ms", 0), DELAY_MS_MAX)
        for addr in addrs:
            self.driver.transport.set_link_fault(addr, drop=drop, delay_s=delay_ms / 1000)
        log.warning("admin_link_fault", targets=addrs, drop=drop, delay_ms=delay_ms)
        return json_response({"targets": addrs, "drop": drop, "delay_ms": delay_ms})

    async def clear(self, _request: web.Request) -> web.Response:
        self.driver.transport.clear_link_faults()
        log.warning("admin_link_faults_cleared")
        return json_response({"cleared": True})
