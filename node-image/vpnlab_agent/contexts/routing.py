"""Routing contexts made real in this namespace: one routing table per context (docs/hsvpn.md).

`plan()` is pure: from the contexts config it lists the steps (devices, addresses, rules, routes).
`apply()` carries them out through pyroute2 and records the undo of each, so `undo()` removes
exactly what was added, also after a failure half-way.

Two ways to make a context, chosen by probing the kernel (`vrf_available()`):
- "vrf": a VRF device `v-<context>` on the context's table; the context's interfaces are its slaves,
  so the kernel itself keeps their connected routes and lookups in that table (l3mdev);
- "rules" (kernels without VRF, such as the lab machines'): an `ip rule iif <dev> lookup <table>`
  for each interface of the context, and the connected routes moved from main into the table.
Packets the router itself sends about a context's packet (ICMP errors: "fragmentation needed"
when a packet is larger than the tunnel, "unreachable") must be routed in that context too, or path
MTU discovery breaks. So every packet entering a context is marked with the context's table
number (nftables, prerouting), `ip rule fwmark <table> lookup <table>` routes by it, and the
container runs with net.ipv4.fwmark_reflect=1, which gives the kernel's ICMP errors the mark of the
packet they answer. (A VRF device does this by itself.) With VRF devices the marks are set by tc
instead (clsact ingress, skbedit): the interfaces exist beforehand there, and a kernel with VRF may
have no nftables for IPv4 (Debian's user-mode Linux 7.x). The kernel XFRM engine needs them there:
a context's SA matches its context's mark (dataplane/xfrm_specs.py).
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
MARK_PRIORITY = 899  # fwmark rules: the router's own ICMP errors about a context's packets
ENDPOINT_PRIORITY = 898  # tunnel-in-tunnel: VXLAN endpoints in main, whatever the mark
NFT_TABLE = "vpnlab_contexts"
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

    op: str  # "vrf" | "vxlan" | "master" | "up" | "addr" | "route" | "unroute" | "rule" | "fdb" | "nft" | "tcmark"
    args: tuple[tuple[str, Any], ...]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)


def _step(op: str, **kw: Any) -> Step:
    return Step(op, tuple(sorted(kw.items())))


def plan(cfg: ContextsConfig, *, vrf: bool, tunnel_mtu: int, extra_devices: bool = True) -> list[Step]:
    """Steps that make every context of `cfg`. `tunnel_mtu`: the IPsec tunnel's inner MTU (the
    VXLAN devices sit inside it). `extra_devices`: also put each context's TUN device into it."""
    steps: list[Step] = []
    marks: list[tuple[str, int]] = []  # (device, mark) for the nftables step
    tit = cfg.method == "tunnel-in-tunnel"
    if tit:
        if not cfg.endpoint:
            raise ValueError("contexts: tunnel-in-tunnel needs our VXLAN endpoint address")
        steps.append(_step("addr", dev="lo", address=cfg.endpoint, prefixlen=32))
        # the VXLAN driver routes its outer packets with the inner packet's mark: the endpoints
        # (and only they, x.x.0.0/24 of the inner block) stay in main, where the tunnel is
        endpoints = ipaddress.ip_network(f"{cfg.endpoint}/24", strict=False)
        steps.append(_step("rule", to=str(endpoints), table=254, priority=ENDPOINT_PRIORITY))
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
            steps.extend(_step("tcmark", dev=dev, mark=c.table) for dev in devices)
        else:
            marks.extend((dev, c.table) for dev in devices)
        steps.append(_step("rule", fwmark=c.table, table=c.table, priority=MARK_PRIORITY))
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
    if marks:
        steps.append(_step("nft", marks=tuple(marks)))
    return steps


def nft_script(marks: tuple[tuple[str, int], ...]) -> str:
    """The nftables table that marks each packet entering a context with its table number."""
    lines = [f"table ip {NFT_TABLE} {{", "  chain prerouting {", "    type filter hook prerouting priority mangle;"]
    lines += [f'    iifname "{dev}" meta mark set {mark}' for dev, mark in marks]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


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
        ipr.rule("add", table=s.get("table"), priority=s.get("priority"), **_rule_match(s))
        applied.undo.append(_step("delrule", **dict(s.args)))
    elif op == "nft":
        _nft(nft_script(s.get("marks")))
        applied.undo.append(_step("delnft"))
    elif op == "tcmark":
        _run(["tc", "qdisc", "add", "dev", s.get("dev"), "clsact"], "tc")
        applied.undo.append(_step("deltc", dev=s.get("dev")))
        _run(["tc", "filter", "add", "dev", s.get("dev"), "ingress", "pref", "1", "matchall",
              "action", "skbedit", "mark", str(s.get("mark"))], "tc")
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


def _rule_match(s: Step) -> dict[str, Any]:
    if s.get("fwmark"):
        return {"fwmark": s.get("fwmark")}
    if s.get("to"):
        net = ipaddress.ip_network(s.get("to"))
        return {"dst": str(net.network_address), "dst_len": net.prefixlen}
    return {"iifname": s.get("iif")}


def _nft(script: str) -> None:
    _run(["nft", "-f", "-"], "nft", script)


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    import subprocess

    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"contexts: {what}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")


def undo(ipr: Any, applied: Applied) -> None:
    """Remove what apply() added, newest first; things already gone are fine."""
    for s in reversed(applied.undo):
        try:
            if s.op == "dellink":
                ipr.link("del", index=_index(ipr, s.get("name")))
            elif s.op == "deladdr":
                ipr.addr("del", index=_index(ipr, s.get("dev")), address=s.get("address"), prefixlen=s.get("prefixlen"))
            elif s.op == "delrule":
                ipr.rule("del", table=s.get("table"), priority=s.get("priority"), **_rule_match(s))
            elif s.op == "delnft":
                _nft(f"delete table ip {NFT_TABLE}\n")
            elif s.op == "deltc":
                _run(["tc", "qdisc", "del", "dev", s.get("dev"), "clsact"], "tc")
            elif s.op == "delroute":
                ipr.route("del", **_route_kw(ipr, s))
        except Exception as exc:  # noqa: BLE001 - gone already, or the device went with its VRF
            log.debug("contexts: undo %s: %s", s.op, exc)
    applied.undo.clear()
