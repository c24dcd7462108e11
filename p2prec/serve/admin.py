"""Node admin calls: link faults for chaos (``Transport.set_link_fault``) and the WAN uplink's
rate (``Transport.set_wan_uplink``: the local backend's ``throttle-wan``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from p2prec.io.node import NodeDriver
from p2prec.io.shaper import MBIT
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
RATE_KBIT_MAX = 100_000_000  # 100 Gbit/s
DC_PREFIX = "dc:"


class LinkFaults:
    """``POST`` sets a fault on links to a peer address, an address prefix, or every member of
    a datacenter (``dc:NAME``, resolved through this node's membership view); with
    ``rate_kbit`` (target then optional) it also shapes this node's WAN uplink, every send to
    another datacenter, at that rate (0: unlimited). ``DELETE`` clears them all and puts the
    uplink back to ``mesh.wan_uplink_mbit``. The changes run on the driver's loop, which owns
    the membership and the transport (the handlers may run on a serving thread)."""

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
        return json_response(await self.driver.call_in_owner(lambda: self._set_fault(body)))

    def _set_fault(self, body: dict[str, Any]) -> dict[str, object]:
        rate_kbit = None
        if "rate_kbit" in body:
            rate_kbit = parse_nonnegative_int("rate_kbit", body["rate_kbit"], RATE_KBIT_MAX)
        answer: dict[str, object] = {"targets": []}
        if rate_kbit is None or "target" in body:  # everything checked before anything changes
            addrs = self.resolve(required(body, "target"))
            drop = parse_bool("drop", body.get("drop", False))
            delay_ms = parse_nonnegative_int("delay_ms", body.get("delay_ms", 0), DELAY_MS_MAX)
            for addr in addrs:
                self.driver.transport.set_link_fault(addr, drop=drop, delay_s=delay_ms / 1000)
            log.warning("admin_link_fault", targets=addrs, drop=drop, delay_ms=delay_ms)
            answer = {"targets": addrs, "drop": drop, "delay_ms": delay_ms}
        if rate_kbit is not None:
            self.driver.transport.set_wan_uplink(rate_kbit * 1000 / 8)
            log.warning("admin_wan_uplink", rate_kbit=rate_kbit)
            answer["rate_kbit"] = rate_kbit
        return answer

    async def clear(self, _request: web.Request) -> web.Response:
        await self.driver.call_in_owner(self._clear)
        return json_response({"cleared": True})

    def _clear(self) -> None:
        self.driver.transport.clear_link_faults()
        configured = self.driver.config.mesh.wan_uplink_mbit * MBIT
        if self.driver.transport.wan_uplink_bytes_s != configured:
            self.driver.transport.set_wan_uplink(configured)
        log.warning("admin_link_faults_cleared")
