"""The routes a data-plane engine keeps in the kernel: the engine says which it wants, `RouteSync`
makes it so, make-before-break (new routes first, then the ones no longer wanted go).

A route is keyed as the kernel keys it, (table, dst, metric): two SAs covering the same prefix get
different metrics when their preferences differ (`netconfig.tunnel_metric`), so the preferred
SA's route wins and the other stays in place for when it goes. Routes with the same key collapse
into the first one wanted. Only routes this object added are ever deleted.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from vpnlab_agent.dataplane.base import EngineError
from vpnlab_agent.netlink_routes import RouteRequest, describe, run
from vpnlab_agent.rtnl import Rtnl, RtnlError

log = logging.getLogger(__name__)

MAIN_TABLE = 254


@dataclass(frozen=True, slots=True)
class Route:
    dst: str  # CIDR
    oif: int
    metric: int = 0
    gateway: str | None = None
    prefsrc: str | None = None
    table: int = MAIN_TABLE

    @property
    def key(self) -> tuple[int, str, int]:
        return self.table, str(ipaddress.IPv4Network(self.dst, strict=False)), self.metric

    def request(self) -> RouteRequest:
        return RouteRequest.of(self.key[1], metric=self.metric, oif=self.oif, gateway=self.gateway,
                               prefsrc=self.prefsrc, table=self.table)


class RouteSync:
    """The set of routes one engine owns. Not thread-safe: the engine calls it under its own lock."""

    def __init__(self) -> None:
        self.installed: dict[tuple[int, str, int], Route] = {}

    def sync(self, wanted: Iterable[Route]) -> None:
        """Make the kernel hold exactly `wanted` among the routes this object manages: the new and
        changed ones replaced in one batch, then, if all went in, the unwanted ones deleted in another.

        Raises EngineError if a route cannot be added (what was added stays recorded, so the
        caller can sync back to its previous state)."""
        desired: dict[tuple[int, str, int], Route] = {}
        for r in wanted:
            desired.setdefault(r.key, r)
        changed = [r for key, r in desired.items() if self.installed.get(key) != r]
        gone = [key for key in self.installed if key not in desired]
        if not changed and not gone:
            return
        try:
            with Rtnl() as rt:
                failed = None
                for r, code in zip(changed, run(rt, [("replace", r.request()) for r in changed])):
                    if code:
                        failed = failed or EngineError(f"route {r.key[1]} metric {r.metric}: {describe(code)}")
                    else:
                        self.installed[r.key] = r
                if failed is not None:
                    raise failed
                dropped = [self.installed.pop(key) for key in gone]
                for r, code in zip(dropped, run(rt, [("del", r.request()) for r in dropped])):
                    if code not in (0, errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        log.warning("route del %s metric %d: %s", r.key[1], r.metric, describe(code))
        except RtnlError as e:
            raise EngineError(f"routes: {e.strerror}") from e

    def clear(self) -> None:
        """Remove every route this object added (close)."""
        try:
            self.sync(())
        except Exception as e:  # noqa: BLE001 - closing: the namespace or device may be gone
            log.debug("routes: clearing: %s", e)
            self.installed.clear()
