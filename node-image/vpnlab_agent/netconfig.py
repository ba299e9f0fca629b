"""Interfaces, addresses and routes from the node config, through rtnetlink (rtnl.py).

`plan()` is pure: it checks the config and lists what must exist. `wait_for_links()` waits (bounded)
until the orchestrator has moved every named interface into our namespace. `apply()` makes the plan
true and records only what it added itself, so that `undo()` removes exactly that on shutdown.
Sysctls (forwarding) are Docker's job: /proc/sys is read-only in a container.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import importlib.util
import ipaddress
import logging
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.netlink_routes import RouteRequest, describe, run
from vpnlab_agent.rtnl import Rtnl, RtnlError

log = logging.getLogger("vpnlab_agent.netconfig")

WAIT_TIMEOUT_S = 60.0
# Leak guards: an "unreachable" route for every remote traffic selector, at a metric above anything
# a data plane installs. While a tunnel is up its route (tunnel_metric(), or strongSwan's table 220)
# wins; while it is down, traffic for the remote LAN is refused here instead of leaving in plaintext
# through the underlay's default route.
GUARD_METRIC = 4090
# Routes of SAs that may cover the same prefix with different preferences (the XFRM engine: one
# route per reqid) go at tunnel_metric(preference) = TUNNEL_METRIC - preference, so the preferred
# SA's route wins and the other's is in place at once when it goes. Preferences beyond
# PREFERENCE_RANGE rank like its ends. (The userspace engine routes each prefix once, at metric 0,
# into its TUN device, and its SA table picks the SA.)
TUNNEL_METRIC = 1024
PREFERENCE_RANGE = (-1000, 1000)
POLL_INTERVAL_S = 0.1


def clamp_preference(preference: int) -> int:
    low, high = PREFERENCE_RANGE
    return min(max(preference, low), high)


def tunnel_metric(preference: int) -> int:
    """The route metric for a remote selector of an SA with this preference (see TUNNEL_METRIC)."""
    return TUNNEL_METRIC - clamp_preference(preference)


class NetConfigError(Exception):
    """The node config cannot be applied to this namespace; one-line message."""


@dataclass(frozen=True, slots=True)
class PlannedAddress:
    dev: str
    address: str  # without prefix
    prefixlen: int
    family: int  # 4 or 6


@dataclass(frozen=True, slots=True)
class PlannedRoute:
    dst: str  # network address, e.g. "0.0.0.0"
    dst_len: int
    via: str | None
    dev: str | None
    family: int
    type: str = "unicast"  # or "unreachable" (a leak guard)
    metric: int = 0

    @property
    def cidr(self) -> str:
        return f"{self.dst}/{self.dst_len}"


@dataclass(frozen=True)
class NetPlan:
    links: tuple[str, ...]  # interfaces to bring up, in config order ("lo" first)
    addresses: tuple[PlannedAddress, ...]
    routes: tuple[PlannedRoute, ...]

    @property
    def required_links(self) -> tuple[str, ...]:
        return tuple(name for name in self.links if name != "lo")


def plan(config: NodeConfig) -> NetPlan:
    """Check the config's interfaces and routes and turn them into a plan (no I/O)."""
    links: list[str] = ["lo"]
    addresses: list[PlannedAddress] = []
    for iface in config.interfaces:
        if not iface.name or len(iface.name) > 15 or "/" in iface.name or " " in iface.name:
            raise NetConfigError(f"interface {iface.name!r}: not a valid Linux interface name")
        if iface.name in links:
            raise NetConfigError(f"interface {iface.name}: listed twice")
        links.append(iface.name)
        for cidr in iface.addresses:
            try:
                ifa = ipaddress.ip_interface(cidr)
            except ValueError:
                raise NetConfigError(f"interface {iface.name}: {cidr!r} is not an address/prefix") from None
            if "/" not in cidr:
                raise NetConfigError(f"interface {iface.name}: {cidr!r} needs a prefix length")
            addresses.append(
                PlannedAddress(iface.name, str(ifa.ip), ifa.network.prefixlen, ifa.version)
            )
    routes: list[PlannedRoute] = []
    for route in config.routes:
        try:
            net = ipaddress.ip_network(route.dst, strict=True)
        except ValueError:
            raise NetConfigError(f"route {route.dst!r}: not a network in CIDR notation") from None
        if route.via is None and route.dev is None:
            raise NetConfigError(f"route {route.dst}: needs a gateway (via) or a device (dev)")
        if route.dev is not None and route.dev not in links:
            raise NetConfigError(f"route {route.dst}: device {route.dev} is not one of {links[1:]}")
        if route.via is not None:
            try:
                gw = ipaddress.ip_address(route.via)
            except ValueError:
                raise NetConfigError(f"route {route.dst}: gateway {route.via!r} is not an address") from None
            if gw.version != net.version:
                raise NetConfigError(f"route {route.dst}: gateway {route.via} is another address family")
        routes.append(
            PlannedRoute(str(net.network_address), net.prefixlen, route.via, route.dev, net.version)
        )
    routes.extend(leak_guards(config, addresses, routes))
    return NetPlan(tuple(links), tuple(addresses), tuple(routes))


def leak_guards(
    config: NodeConfig, addresses: list[PlannedAddress], routes: list[PlannedRoute]
) -> list[PlannedRoute]:
    """Unreachable routes for the remote selectors of every IKE peer (see GUARD_METRIC).

    Never for a selector that would cover the underlay: one containing a peer's address, our own
    WAN networks, or a configured route's gateway (e.g. 0.0.0.0/0 in a full tunnel), because that
    would cut IKE itself off.
    """
    if config.ike is None:
        return []
    wan_names = {iface.name for iface in config.interfaces if iface.kind == "wan"}
    underlay = [
        ipaddress.ip_network(f"{a.address}/{a.prefixlen}", strict=False) for a in addresses if a.dev in wan_names
    ]
    keep_clear = [ipaddress.ip_address(p.address) for p in config.ike.peers if p.address]
    keep_clear += [ipaddress.ip_address(r.via) for r in routes if r.via]
    out: list[PlannedRoute] = []
    seen: set[str] = set()
    for peer in config.ike.peers:
        for cidr in peer.remote_ts:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise NetConfigError(f"peer {peer.name}: remote_ts {cidr!r} is not a CIDR") from None
            if str(net) in seen or net.prefixlen == 0:
                continue
            if any(addr in net for addr in keep_clear if addr.version == net.version) or any(
                u.version == net.version and u.overlaps(net) for u in underlay
            ):
                continue
            seen.add(str(net))
            out.append(PlannedRoute(
                str(net.network_address), net.prefixlen, None, None, net.version,
                type="unreachable", metric=GUARD_METRIC,
            ))
    return out


# Where the pyroute2 names the agent uses really live (pyroute2 0.7).
_PYROUTE2_NAMES = {
    "IPRoute": "pyroute2.iproute.linux",
    "NetlinkError": "pyroute2.netlink.exceptions",
    "NetNS": "pyroute2.nslink.nslink",
    "IPRSocket": "pyroute2.netlink.rtnl.iprsocket",
}


def lighten_pyroute2() -> bool:
    """Make `import pyroute2` load only the submodules actually used. Call before anything imports it.

    Why: pyroute2's package __init__ imports every module it has (NDB with sqlite, IPDB, nl80211,
    ...): about 10 MiB of resident memory per agent, in every router container, for nothing. This
    puts a stand-in package in sys.modules with the same __path__ whose attributes load lazily: the
    names above from their modules, submodules on demand, and, for any other name, the real
    __init__ once (so nothing breaks, it is only heavier). Used by the agent process only.
    """
    if "pyroute2" in sys.modules:
        return False
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or not spec.submodule_search_locations or spec.loader is None:
        return False
    pkg = types.ModuleType("pyroute2")
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__file__ = spec.origin
    pkg.__package__ = "pyroute2"
    loaded_fully = False

    def lazy_attribute(name: str) -> Any:
        nonlocal loaded_fully
        if name.startswith("__"):
            raise AttributeError(name)
        if name in _PYROUTE2_NAMES:
            value = getattr(importlib.import_module(_PYROUTE2_NAMES[name]), name)
            setattr(pkg, name, value)
            return value
        try:
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pyroute2.{name}" or loaded_fully:
                raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None
        loaded_fully = True
        spec.loader.exec_module(pkg)  # type: ignore[union-attr]
        return getattr(pkg, name)

    pkg.__getattr__ = lazy_attribute  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = pkg
    _stub_pyroute2_lab(pkg.__path__)
    return True


def _stub_pyroute2_lab(path: list[str]) -> None:
    """pyroute2.lab gives IPRoute a base class that wraps every method in unittest.mock when its
    `use_mock` is set (pyroute2's own test lab); importing it pulls unittest, mock, difflib and
    pprint in: ~1.3 MiB per agent. The stand-in is that base class with use_mock off, as it is here."""
    import os

    if not any(os.path.exists(os.path.join(p, "lab.py")) for p in path):
        return
    lab = types.ModuleType("pyroute2.lab")

    class LAB_API:  # noqa: N801 - pyroute2's name
        pass

    lab.LAB_API = LAB_API  # type: ignore[attr-defined]
    lab.registry = []  # type: ignore[attr-defined]
    lab.use_mock = False  # type: ignore[attr-defined]
    sys.modules["pyroute2.lab"] = lab


def missing_links(ipr: Rtnl, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if ipr.link_index(name) is None]


async def wait_for_links(ipr: Rtnl, names: tuple[str, ...], timeout: float = WAIT_TIMEOUT_S) -> None:
    """Poll netlink until every named interface exists here; NetConfigError after `timeout`."""
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        missing = missing_links(ipr, names)
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise NetConfigError(
                f"interfaces {', '.join(missing)} did not appear within {timeout:g} s"
            )
        if not announced:
            log.info("waiting for interfaces: %s", ", ".join(missing))
            announced = True
        await asyncio.sleep(POLL_INTERVAL_S)


@dataclass
class Applied:
    """What apply() added itself (and so what undo() removes)."""

    addresses: list[PlannedAddress] = field(default_factory=list)
    routes: list[PlannedRoute] = field(default_factory=list)


def _family(version: int) -> int:
    import socket

    return socket.AF_INET if version == 4 else socket.AF_INET6


def _index(ipr: Rtnl, name: str) -> int:
    found = ipr.link_index(name)
    if found is None:
        raise NetConfigError(f"interface {name} does not exist")
    return found


def _route_request(route: PlannedRoute, index: dict[str, int]) -> RouteRequest:
    return RouteRequest(route.dst, route.dst_len, route.family, type=route.type, metric=route.metric,
                        gateway=route.via, oif=index[route.dev] if route.dev else 0)


def _indexes(ipr: Rtnl, routes: tuple[PlannedRoute, ...] | list[PlannedRoute]) -> dict[str, int]:
    return {dev: _index(ipr, dev) for dev in {r.dev for r in routes if r.dev}}


def apply(ipr: Rtnl, netplan: NetPlan, applied: Applied | None = None) -> Applied:
    """Bring links up, add addresses, then routes. Already-present items are left alone and not
    recorded; what is added is recorded into `applied` at once, so a failure half-way can be undone.
    Routes go in one batch (netlink_routes.py): a refused one is reported after the batch, and the
    ones added around it are recorded like the others."""
    applied = applied if applied is not None else Applied()
    for name in netplan.links:
        ipr.set_link(_index(ipr, name), up=True)
    for addr in netplan.addresses:
        try:
            ipr.add_address(_index(ipr, addr.dev), addr.address, addr.prefixlen, _family(addr.family))
        except RtnlError as exc:
            if exc.code != errno.EEXIST:
                raise NetConfigError(f"{addr.dev}: cannot add {addr.address}/{addr.prefixlen}: {exc}") from None
            continue
        applied.addresses.append(addr)
        log.info("%s: address %s/%d", addr.dev, addr.address, addr.prefixlen)
    index = _indexes(ipr, netplan.routes)
    codes = run(ipr, [("add", _route_request(r, index)) for r in netplan.routes])
    refused: list[str] = []
    guards: list[str] = []
    for route, code in zip(netplan.routes, codes):
        if code:
            if code != errno.EEXIST:
                where = f" via {route.via}" if route.via else ""
                refused.append(f"route {route.cidr}{where}: {describe(code)}")
            continue
        applied.routes.append(route)
        if route.type == "unicast":
            log.info("route %s via %s dev %s", route.cidr, route.via or "-", route.dev or "-")
        else:
            guards.append(route.cidr)
    if guards:  # one line, not one per remote LAN: a hub's branches have hundreds
        log.info("leak guards (unreachable, metric %d) for %d remote selectors: %s", GUARD_METRIC, len(guards),
                 _abridged(guards))
    if refused:
        raise NetConfigError(refused[0])
    return applied


def _abridged(items: list[str], shown: int = 8) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def undo(ipr: Rtnl, applied: Applied) -> None:
    """Remove what apply() added, routes first; things already gone are fine."""
    try:
        index = _indexes(ipr, [r for r in applied.routes if r.dev and ipr.link_index(r.dev) is not None])
        run(ipr, [("del", _route_request(r, index)) for r in reversed(applied.routes) if not r.dev or r.dev in index])
    except (OSError, NetConfigError):
        pass
    for addr in reversed(applied.addresses):
        try:
            ipr.delete_address(_index(ipr, addr.dev), addr.address, addr.prefixlen, _family(addr.family))
        except (OSError, NetConfigError):
            pass
    applied.routes.clear()
    applied.addresses.clear()


_ROUTE_TYPES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}  # RTN_*


def snapshot(ipr: Rtnl) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Interfaces and routes as the status report shows them (read live from the kernel)."""
    import socket

    addrs: dict[int, list[str]] = {}
    for a in ipr.addresses():
        if a.address.startswith("fe80:"):
            continue  # IPv6 link-local: every link has one, it only clutters the report
        addrs.setdefault(a.index, []).append(f"{a.address}/{a.prefixlen}")
    links = ipr.links()
    names = {link.index: link.name for link in links}
    interfaces = [{"name": link.name, "addresses": addrs.get(link.index, []), "up": link.up} for link in links]
    routes: list[dict[str, Any]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.routes(family):  # every table, strongSwan's 220 too
            kind = _ROUTE_TYPES.get(r.type)
            if r.table == 255 or kind is None:  # skip the local table, broadcast and the like
                continue
            if family == socket.AF_INET6 and (r.dst or "").startswith(("fe80", "ff00")):
                continue
            default = "0.0.0.0" if family == socket.AF_INET else "::"
            routes.append({
                "dst": f"{r.dst or default}/{r.dst_len}",
                "via": r.gateway,
                "dev": names.get(r.oif) if r.oif else None,
                "table": r.table,
                "type": kind,
                "metric": r.metric,
            })
    return interfaces, routes
