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
from typing import Any

from vpnlab_agent.dataplane.base import EngineError

log = logging.getLogger(__name__)

MAIN_TABLE = 254


@dataclass(frozen=True)
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

    def netlink(self) -> dict[str, Any]:
        """pyroute2 IPRoute.route() arguments."""
        args: dict[str, Any] = {"dst": self.key[1], "oif": self.oif, "priority": self.metric}
        if self.table != MAIN_TABLE:
            args["table"] = self.table
        if self.gateway:
            args["gateway"] = self.gateway
        if self.prefsrc:
            args["prefsrc"] = self.prefsrc
        return args


class RouteSync:
    """The set of routes one engine owns. Not thread-safe: the engine calls it under its own lock."""

    def __init__(self) -> None:
        self.installed: dict[tuple[int, str, int], Route] = {}

    def sync(self, wanted: Iterable[Route]) -> None:
        """Make the kernel hold exactly `wanted` among the routes this object manages.

        Raises EngineError if a route cannot be added (what was added before stays recorded, so the
        caller can sync back to its previous state)."""
        from pyroute2 import IPRoute

        desired: dict[tuple[int, str, int], Route] = {}
        for r in wanted:
            desired.setdefault(r.key, r)
        with IPRoute() as ipr:
            for key, r in desired.items():
                if self.installed.get(key) == r:
                    continue
                try:
                    ipr.route("replace", **r.netlink())
                except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError and others
                    raise EngineError(f"route {r.key[1]} metric {r.metric}: {e}") from e
                self.installed[key] = r
            for key in [k for k in self.installed if k not in desired]:
                self._delete(ipr, self.installed.pop(key))

    def clear(self) -> None:
        """Remove every route this object added (close)."""
        try:
            self.sync(())
        except Exception as e:  # noqa: BLE001 - closing: the namespace or device may be gone
            log.debug("routes: clearing: %s", e)
            self.installed.clear()

    @staticmethod
    def _delete(ipr: Any, r: Route) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            ipr.route("del", **r.netlink())
        except NetlinkError as e:
            if e.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                log.warning("route del %s metric %d: %s", r.key[1], r.metric, e)
        except Exception as e:  # noqa: BLE001 - the device may be gone already
            log.debug("route del %s: %s", r.key[1], e)
