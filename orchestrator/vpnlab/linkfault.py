"""Link faults: `vpnlab link down|up|set|clear|show`. A link is one node interface and its
fabric port (the veth end on the bridge in the fabric namespace).

- down/up sets the fabric port's state: the node sees NO-CARRIER, like a pulled cable, and cannot
  undo it from inside.
- set --rate shapes both directions with tbf (on the fabric port, towards the node, and on the
  node's interface, away from it). --delay and --loss need the kernel's netem qdisc: it is probed
  when asked for, and a kernel without it (these lab machines) gets one line saying so.
- set --mtu sets the MTU of both ends of the veth (the node's interface and its fabric port), so
  the node sends at most that much and the bridge drops larger frames towards it; clear puts back
  the lab's MTU (LAB_MTU). The agent's userspace ESP engine follows its underlay's MTU.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vpnlab.errors import LabError
from vpnlab.lifecycle import node_container
from vpnlab.net.fabric import Fabric, fabric_netns_name
from vpnlab.net.namespace import iproute_in
from vpnlab.net.portrecords import port_records
from vpnlab.runtime.base import Runtime

ROOT = 0x10000  # handle 1:
RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
DELAY_RE = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
LOSS_RE = re.compile(r"^(\d+(?:\.\d+)?)%$")
LAB_MTU = 1500  # every lab veth's MTU as wired
MIN_MTU, MAX_MTU = 576, 9000  # 576: the IPv4 datagram every host must accept (RFC 791)
TBF_LATENCY = "50ms"  # how long a packet may wait in the bucket before it is dropped
NO_NETEM = (
    "delay and loss need the kernel's netem qdisc (sch_netem), which this kernel does not have; "
    "rate limits work (--rate, tbf)"
)


@dataclass(frozen=True)
class LinkView:
    node: str
    ifname: str
    port: str
    up: bool
    shaping: str  # the root qdisc towards the node, "" when none
    mtu: int = LAB_MTU  # the fabric port's


def _mtu(value: int) -> int:
    if not MIN_MTU <= value <= MAX_MTU:
        raise LabError(f"link: bad MTU {value} (use {MIN_MTU} to {MAX_MTU})")
    return value


def set_mtu(lab: str, node: str, ifname: str, mtu: int, runtime: Runtime) -> None:
    """Both ends of the node's veth at `mtu`."""
    mtu = _mtu(mtu)
    port, node_ns = _port(runtime, lab, node, ifname)
    with Fabric.open(fabric_netns_name(lab)) as fabric, iproute_in(node_ns) as inside:
        for ipr, dev in ((fabric.ipr, port), (inside, ifname)):
            found = ipr.link_lookup(ifname=dev)
            if not found:
                raise LabError(f"node {node}: no interface {dev}: {_heal(lab, node)}")
            try:
                ipr.link("set", index=found[0], mtu=mtu)
            except NetlinkError as e:
                raise LabError(f"MTU {mtu} on {dev}: {e.args[1] if len(e.args) > 1 else e}") from None


def _rate_bits(rate: str) -> int:
    m = RATE_RE.match(rate.lower())
    if not m:
        raise LabError(f"link: bad rate {rate!r} (use e.g. 10mbit, 500kbit, 1gbit)")
    value = float(m.group(1)) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)]
    if value < 8000:
        raise LabError(f"link: rate {rate!r} is below 8kbit")
    return int(value)


def _usecs(delay: str) -> int:
    m = DELAY_RE.match(delay.lower())
    if not m:
        raise LabError(f"link: bad delay {delay!r} (use e.g. 20ms)")
    return int(float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)])


def _loss_percent(loss: str) -> float:
    m = LOSS_RE.match(loss)
    if not m or float(m.group(1)) > 100:
        raise LabError(f"link: bad loss {loss!r} (use e.g. 1%)")
    return float(m.group(1))


def _port(rt: Runtime, lab: str, node: str, ifname: str) -> tuple[str, str]:
    """(fabric port, container netns path) of one node interface."""
    info = node_container(rt, lab, node)
    records = {r.ifname: r for r in port_records(rt.labels(info.name))}
    if ifname not in records:
        raise LabError(f"node {node} has no interface {ifname!r} (interfaces: {', '.join(sorted(records)) or 'none'})")
    if info.state != "running":
        raise LabError(f"node {node} is {info.state}: `vpnlab start {lab} {node}` first")
    return records[ifname].port, info.netns_path


def set_link(lab: str, node: str, ifname: str, up: bool, runtime: Runtime) -> None:
    port, _ = _port(runtime, lab, node, ifname)
    with Fabric.open(fabric_netns_name(lab)) as fabric:
        try:
            fabric.set_state(port, up)
        except LookupError:
            raise LabError(f"node {node}: fabric port {port} is missing: {_heal(lab, node)}") from None


def shape_link(
    lab: str, node: str, ifname: str, runtime: Runtime, *,
    rate: str | None = None, delay: str | None = None, loss: str | None = None,
) -> None:
    """Replace the link's shaping in both directions (rate via tbf; delay/loss via netem)."""
    if rate is None and delay is None and loss is None:
        raise LabError("link set: give --rate, --delay, --loss or --mtu (or use `vpnlab link clear`)")
    bits = _rate_bits(rate) if rate else None
    usecs = _usecs(delay) if delay else None
    percent = _loss_percent(loss) if loss is not None else None
    port, node_ns = _port(runtime, lab, node, ifname)
    with Fabric.open(fabric_netns_name(lab)) as fabric, iproute_in(node_ns) as inside:
        for ipr, dev in ((fabric.ipr, port), (inside, ifname)):
            _apply(ipr, dev, bits, usecs, percent)


def _apply(ipr: IPRoute, dev: str, bits: int | None, usecs: int | None, percent: float | None) -> None:
    found = ipr.link_lookup(ifname=dev)
    if not found:
        raise LabError(f"no interface {dev}")
    index = found[0]
    _clear(ipr, index)
    try:
        if usecs is None and percent is None:
            assert bits is not None
            # a burst of at least one MTU per 10 ms of rate, or tbf drops everything
            ipr.tc("add", "tbf", index, ROOT, rate=f"{bits}bit", burst=max(1600, bits // 800), latency=TBF_LATENCY)
            return
        kw: dict[str, object] = {}
        if usecs is not None:
            kw["delay"] = usecs
        if percent is not None:
            kw["loss"] = percent
        if bits is not None:
            kw["rate"] = f"{bits}bit"
        ipr.tc("add", "netem", index, ROOT, **kw)
    except NetlinkError as e:
        if e.code in (errno.ENOENT, errno.EOPNOTSUPP) and (usecs is not None or percent is not None):
            raise LabError(NO_NETEM) from None
        raise LabError(f"traffic control on {dev}: {e.args[1] if len(e.args) > 1 else e}") from None


def _clear(ipr: IPRoute, index: int) -> None:
    try:
        ipr.tc("del", index=index, handle=ROOT)
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.EINVAL):
            raise


def clear_link(lab: str, node: str, ifname: str, runtime: Runtime) -> None:
    """No shaping either way, the lab's MTU at both ends, and the link up."""
    port, node_ns = _port(runtime, lab, node, ifname)
    with Fabric.open(fabric_netns_name(lab)) as fabric, iproute_in(node_ns) as inside:
        for ipr, dev in ((fabric.ipr, port), (inside, ifname)):
            found = ipr.link_lookup(ifname=dev)
            if found:
                _clear(ipr, found[0])
                ipr.link("set", index=found[0], mtu=LAB_MTU)
        fabric.set_state(port, True)


def show_links(lab: str, runtime: Runtime) -> list[LinkView]:
    containers = runtime.containers(lab)
    if not containers:
        raise LabError(f"no lab {lab} is running")
    views = []
    with Fabric.open(fabric_netns_name(lab)) as fabric:
        ipr = fabric.ipr
        qdiscs = {}
        for q in ipr.get_qdiscs():
            if q.get("parent") == 0xFFFFFFFF:
                qdiscs[q["index"]] = q.get_attr("TCA_KIND")
        by_name = {m.get_attr("IFLA_IFNAME"): m for m in ipr.get_links()}
        for c in containers:
            for r in port_records(runtime.labels(c.name)):
                m = by_name.get(r.port)
                kind = qdiscs.get(m["index"]) if m is not None else None
                views.append(LinkView(
                    node=c.node, ifname=r.ifname, port=r.port,
                    up=bool(m is not None and m["flags"] & 1),
                    shaping=kind if kind in ("tbf", "netem") else "",
                    mtu=int(m.get_attr("IFLA_MTU") or 0) if m is not None else 0,
                ))
    return views


def _heal(lab: str, node: str) -> str:
    return f"heal it with `vpnlab restart {lab} {node}`"
