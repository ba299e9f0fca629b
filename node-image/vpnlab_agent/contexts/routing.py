"""Routing contexts made real in this namespace: one routing table per context (docs/hsvpn.md).

`plan()` is pure: from the contexts config it lists the steps (devices, addresses, rules, routes).
`apply()` carries them out through pyroute2 and records the undo of each, so `undo()` removes
exactly what was added, also after a failure half-way.

Two ways to make a context, chosen by probing the kernel (`vrf_available()`):
- "vrf": a VRF device `v-<context>` on the context's table; the context's interfaces are its slaves,
  so the kernel itself keeps their connected routes and lookups in that table (l3mdev);
- "rules" (kernels without VRF, such as the lab machines'): an `ip rule iif <dev> lookup <table>`
  for each interface of the context, and the connected routes moved from main into the table.
Either way each table ends in an `unreachable default`: a packet of one context that matches no
route of its own is dropped there, never looked up in main or in another context.

The devices that carry a context across the tunnel are put into it the same way: the VXLAN devices
of tunnel-in-tunnel (made here), the context TUN devices of the userspace engine (made by it).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.contexts.config import VXLAN_PORT, ContextsConfig

log = logging.getLogger(__name__)

RULE_PRIORITY = 900  # before main (32766); the kernel's l3mdev rule is 1000
GUARD_METRIC = 4095  # the context's final unreachable default
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


def vrf_device(context: str) -> str:
    return f"v-{context}"


def vxlan_device(context: str) -> str:
    return f"x-{context}"


def tun_device(context: str) -> str:
    """The userspace engine's TUN for a context (hsvpn, per-network): what it reads carries the context."""
    return f"t-{context}"


@dataclass(frozen=True)
class Step:
    """One change: `op` is the pyroute2 verb family, `args` its arguments (names, not indexes)."""

    op: str  # "vrf" | "vxlan" | "master" | "up" | "addr" | "route" | "unroute" | "rule" | "fdb"
    args: tuple[tuple[str, Any], ...]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)


def _step(op: str, **kw: Any) -> Step:
    return Step(op, tuple(sorted(kw.items())))


def plan(cfg: ContextsConfig, *, vrf: bool, tunnel_mtu: int, extra_devices: bool = True) -> list[Step]:
    """Steps that make every context of `cfg`. `tunnel_mtu`: the IPsec tunnel's inner MTU (the
    VXLAN devices sit inside it). `extra_devices`: also put each context's TUN device into it."""
    steps: list[Step] = []
    tit = cfg.method == "tunnel-in-tunnel"
    if tit:
        if not cfg.endpoint:
            raise ValueError("contexts: tunnel-in-tunnel needs our VXLAN endpoint address")
        steps.append(_step("addr", dev="lo", address=cfg.endpoint, prefixlen=32))
    for c in cfg.contexts:
        devices = list(c.interfaces)
        if tit:
            if not c.transit or not c.vni:
                raise ValueError(f"contexts: {c.name} needs a transit address and a VNI for tunnel-in-tunnel")
            dev = vxlan_device(c.name)
            steps.append(_step("vxlan", name=dev, vni=c.vni, local=cfg.endpoint, port=VXLAN_PORT,
                               mtu=tunnel_mtu - VXLAN_OVERHEAD))
            for r in cfg.reach:
                if r.context == c.name and r.endpoint:
                    steps.append(_step("fdb", dev=dev, dst=r.endpoint))
            devices.append(dev)
        elif extra_devices:
            devices.append(tun_device(c.name))
        if vrf:
            steps.append(_step("vrf", name=vrf_device(c.name), table=c.table))
            for dev in devices:
                steps.append(_step("master", dev=dev, master=vrf_device(c.name)))
        else:
            for dev in devices:
                steps.append(_step("rule", iif=dev, table=c.table, priority=RULE_PRIORITY))
        if tit:
            steps.append(_step("addr", dev=vxlan_device(c.name), address=str(ipaddress.ip_interface(c.transit).ip),
                               prefixlen=ipaddress.ip_interface(c.transit).network.prefixlen))
            steps.append(_step("up", dev=vxlan_device(c.name)))
        if not vrf:
            # the kernel put the connected routes of these interfaces into main: move them
            for dev, lan in zip(c.interfaces, c.lans):
                net = ipaddress.ip_network(lan)
                steps.append(_step("unroute", dev=dev, dst=str(net.network_address), dst_len=net.prefixlen))
                steps.append(_step("route", table=c.table, dst=str(net.network_address), dst_len=net.prefixlen,
                                   dev=dev, scope=253, src=str(net.network_address + 1)))
            if tit:
                transit = ipaddress.ip_interface(c.transit).network
                steps.append(_step("unroute", dev=vxlan_device(c.name), dst=str(transit.network_address),
                                   dst_len=transit.prefixlen))
                steps.append(_step("route", table=c.table, dst=str(transit.network_address), dst_len=transit.prefixlen,
                                   dev=vxlan_device(c.name), scope=253))
        if tit:
            for r in cfg.reach:
                if r.context != c.name:
                    continue
                for cidr in r.remote:
                    net = ipaddress.ip_network(cidr)
                    steps.append(_step("route", table=c.table, dst=str(net.network_address), dst_len=net.prefixlen,
                                       via=r.via, dev=vxlan_device(c.name)))
        steps.append(_step("route", table=c.table, dst="0.0.0.0", dst_len=0, type="unreachable", metric=GUARD_METRIC))
    return steps


# ---- the kernel ---------------------------------------------------------------------------------


def vrf_available(ipr: Any) -> bool:
    """Whether this kernel makes VRF devices: tried with a throwaway one, never guessed."""
    from pyroute2 import NetlinkError

    name = "v-probe"
    try:
        ipr.link("add", ifname=name, kind="vrf", vrf_table=4000)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
            return True
        return False
    ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
    return True


@dataclass
class Applied:
    undo: list[Step] = field(default_factory=list)  # in the order they were done


def _index(ipr: Any, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise LookupError(f"interface {name} does not exist")
    return int(found[0])


def _route_kw(ipr: Any, s: Step) -> dict[str, Any]:
    kw: dict[str, Any] = {"table": s.get("table", 254), "dst_len": s.get("dst_len")}
    if s.get("dst_len"):
        kw["dst"] = s.get("dst")
    if s.get("type"):
        kw["type"] = s.get("type")
    if s.get("metric"):
        kw["priority"] = s.get("metric")
    if s.get("via"):
        kw["gateway"] = s.get("via")
    if s.get("dev"):
        kw["oif"] = _index(ipr, s.get("dev"))
    if s.get("scope") is not None:
        kw["scope"] = s.get("scope")
    if s.get("src"):
        kw["prefsrc"] = s.get("src")
    return kw


def apply(ipr: Any, steps: list[Step], applied: Applied) -> None:
    """Carry out `steps` in order; each one done is recorded in `applied` at once."""
    from pyroute2 import NetlinkError

    for s in steps:
        try:
            _do(ipr, s, applied)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                continue
            raise RuntimeError(f"contexts: {s.op} {dict(s.args)}: {exc}") from None


def _do(ipr: Any, s: Step, applied: Applied) -> None:
    from pyroute2 import NetlinkError

    op = s.op
    if op == "vrf":
        ipr.link("add", ifname=s.get("name"), kind="vrf", vrf_table=s.get("table"))
        applied.undo.append(_step("dellink", name=s.get("name")))
        ipr.link("set", index=_index(ipr, s.get("name")), state="up")
    elif op == "vxlan":
        ipr.link("add", ifname=s.get("name"), kind="vxlan", vxlan_id=s.get("vni"), vxlan_local=s.get("local"),
                 vxlan_port=s.get("port"), vxlan_learning=1, mtu=s.get("mtu"))
        applied.undo.append(_step("dellink", name=s.get("name")))
    elif op == "master":
        ipr.link("set", index=_index(ipr, s.get("dev")), master=_index(ipr, s.get("master")))
    elif op == "up":
        ipr.link("set", index=_index(ipr, s.get("dev")), state="up")
    elif op == "addr":
        ipr.addr("add", index=_index(ipr, s.get("dev")), address=s.get("address"), prefixlen=s.get("prefixlen"))
        applied.undo.append(_step("deladdr", dev=s.get("dev"), address=s.get("address"), prefixlen=s.get("prefixlen")))
    elif op == "fdb":
        ipr.fdb("append", ifindex=_index(ipr, s.get("dev")), lladdr="00:00:00:00:00:00", dst=s.get("dst"))
    elif op == "rule":
        ipr.rule("add", iifname=s.get("iif"), table=s.get("table"), priority=s.get("priority"))
        applied.undo.append(_step("delrule", iif=s.get("iif"), table=s.get("table"), priority=s.get("priority")))
    elif op == "route":
        ipr.route("add", **_route_kw(ipr, s))
        applied.undo.append(_step("delroute", **dict(s.args)))
    elif op == "unroute":
        try:
            ipr.route("del", table=254, dst=s.get("dst"), dst_len=s.get("dst_len"), scope=253,
                      oif=_index(ipr, s.get("dev")))
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise
    else:
        raise ValueError(f"contexts: unknown step {op!r}")
    log.info("contexts: %s %s", op, " ".join(f"{k}={v}" for k, v in s.args))


def undo(ipr: Any, applied: Applied) -> None:
    """Remove what apply() added, newest first; things already gone are fine."""
    for s in reversed(applied.undo):
        try:
            if s.op == "dellink":
                ipr.link("del", index=_index(ipr, s.get("name")))
            elif s.op == "deladdr":
                ipr.addr("del", index=_index(ipr, s.get("dev")), address=s.get("address"), prefixlen=s.get("prefixlen"))
            elif s.op == "delrule":
                ipr.rule("del", iifname=s.get("iif"), table=s.get("table"), priority=s.get("priority"))
            elif s.op == "delroute":
                ipr.route("del", **_route_kw(ipr, s))
        except Exception as exc:  # noqa: BLE001 - gone already, or the device went with its VRF
            log.debug("contexts: undo %s: %s", s.op, exc)
    applied.undo.clear()
