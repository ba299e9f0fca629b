"""Routing contexts (HSVPN, docs/hsvpn.md): their LANs, hosts, segments and numbers.

A context is one routing domain across the lab, matched by name between routers. Inside one
context LANs may not overlap (one routing table at the hub must reach all of them); across
contexts they may, and do in topologies/hsvpn.yml, because that is what contexts are for.
Planning is deterministic like the rest of plan.py:
- contexts are numbered 1, 2, ... lab-wide in order of first appearance in the file; the number
  gives the routing table (TABLE_BASE + number), the proposed HSVPN tag and the VXLAN VNI;
- a context LAN not given gets the lowest 10.N.0.0/24 that overlaps nothing given or planned;
- the router takes .1 of each context LAN (interfaces c-<context><i>, segments ctx-<router>-<context>),
  the context's hosts get .10 upward in its first LAN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from vpnlab.errors import TopologyError
from vpnlab.topology.model import Context, Interface, Node, Segment
from vpnlab.topology.schema import NODE_NAME_RE, TopologySpec, parse_cidr

TABLE_BASE = 100  # context n routes in table 100 + n (main is 254, strongSwan's is 220)
VNI_BASE = 1000  # tunnel-in-tunnel: context n is VXLAN VNI 1000 + n
FIRST_HOST_OFFSET = 10
MAX_CONTEXTS = 250  # tables, tags and transit /24s stay below 256
# tunnel-in-tunnel needs inner addresses of its own (VXLAN endpoints, per-context transit subnets):
# a /16 of the shared address space (RFC 6598) that no LAN of the lab touches.
INNER_CANDIDATES = tuple(IPv4Network(f"100.{b}.0.0/16") for b in range(127, 63, -1))

# Ranges that can never be a LAN: a router cannot route them like one.
_NOT_LANS = (
    (IPv4Network("0.0.0.0/8"), "'this network' (0.0.0.0/8)"),
    (IPv4Network("127.0.0.0/8"), "loopback (127.0.0.0/8)"),
    (IPv4Network("169.254.0.0/16"), "link-local (169.254.0.0/16)"),
    (IPv4Network("224.0.0.0/4"), "multicast (224.0.0.0/4)"),
    (IPv4Network("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
)


def not_a_lan(net: IPv4Network) -> str | None:
    """Why `net` cannot be a LAN, or None when it can."""
    for bad, what in _NOT_LANS:
        if net.overlaps(bad):
            return f"LAN {net} is in the {what} range, which cannot be a LAN"
    return None


def interface_name(context: str, index: int) -> str:
    return f"c-{context}{index}"  # context names have at most 10 characters: fits in 15


def segment_name(router: str, context: str, index: int) -> str:
    base = f"ctx-{router}-{context}"
    return base if index == 0 else f"{base}-{index}"


@dataclass
class ContextHost:
    name: str
    router: str
    context: str
    address: IPv4Interface
    segment: str
    gateway: IPv4Address


@dataclass
class ContextsPlan:
    by_router: dict[str, tuple[Context, ...]] = field(default_factory=dict)
    interfaces: dict[str, list[Interface]] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    hosts: list[ContextHost] = field(default_factory=list)
    inner_block: IPv4Network | None = None

    def host_node(self, h: ContextHost) -> Node:
        return Node(
            name=h.name, role="host", implementation="host",
            interfaces=(Interface("eth0", h.segment, h.address),),
            router=h.router, gateway=h.gateway, context=h.context,
        )


def numbers(spec: TopologySpec) -> dict[str, int]:
    """Context name -> number, lab-wide, by first appearance in file order."""
    out: dict[str, int] = {}
    for node in spec.nodes.values():
        for c in node.contexts or ():
            out.setdefault(c.name, len(out) + 1)
    return out


def plan_contexts(
    spec: TopologySpec,
    file: str,
    underlay: IPv4Network,
    hubs_of: dict[str, tuple[str, ...]],
    plain_lans: list[IPv4Network],
    names: set[str],
) -> ContextsPlan:
    """Plan every router's contexts. `plain_lans`: LANs outside contexts (planned ones avoid each
    other); `names`: node names taken so far (context hosts add theirs)."""

    def fail(where: str, problem: str) -> TopologyError:
        return TopologyError(file, where, problem)

    plan = ContextsPlan()
    number = numbers(spec)
    if not number:
        return plan
    if len(number) > MAX_CONTEXTS:
        raise fail("nodes", f"{len(number)} routing contexts: at most {MAX_CONTEXTS} are supported")
    lans: dict[tuple[str, str], list[IPv4Network]] = {}
    in_context: dict[str, list[tuple[IPv4Network, str]]] = {}  # context -> (LAN, router)
    every: list[IPv4Network] = list(plain_lans)
    for router, node in spec.nodes.items():
        for i, c in enumerate(node.contexts or ()):
            where = f"nodes.{router}.contexts.{i}.lan"
            got: list[IPv4Network] = []
            for cidr in c.lan or ():
                net = parse_cidr(cidr)
                problem = not_a_lan(net)
                if problem:
                    raise fail(where, problem)
                if net.prefixlen > 30:
                    raise fail(where, f"LAN {net} is too small (use a /30 or larger)")
                if net.overlaps(underlay):
                    raise fail(where, f"LAN {net} overlaps the underlay (internet: {underlay})")
                for other, owner in in_context.get(c.name, []):
                    if net.overlaps(other):
                        whose = "another LAN of this router" if owner == router else f"{owner}'s LAN"
                        raise fail(where, f"LAN {net} overlaps {whose} {other} in the same context {c.name!r}")
                in_context.setdefault(c.name, []).append((net, router))
                got.append(net)
                every.append(net)
            lans[(router, c.name)] = got
    for router, node in spec.nodes.items():  # planned context LANs: overlap nothing at all
        for c in node.contexts or ():
            if lans[(router, c.name)]:
                continue
            for n in range(256):
                net = IPv4Network(f"10.{n}.0.0/24")
                if not net.overlaps(underlay) and not any(net.overlaps(t) for t in every):
                    break
            else:
                raise fail(f"nodes.{router}.contexts", f"no free 10.N.0.0/24 left for context {c.name!r}; give 'lan'")
            every.append(net)
            lans[(router, c.name)] = [net]
    _check_hubs_carry(spec, file, hubs_of)
    for router, node in spec.nodes.items():
        if not node.contexts:
            continue
        ifaces: list[Interface] = []
        contexts: list[Context] = []
        for i, c in enumerate(node.contexts):
            nets = tuple(lans[(router, c.name)])
            names_here: list[str] = []
            for k, net in enumerate(nets):
                ifname, seg = interface_name(c.name, k), segment_name(router, c.name, k)
                plan.segments.append(Segment(seg, "lan", net))
                ifaces.append(Interface(ifname, seg, IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")))
                names_here.append(ifname)
            contexts.append(Context(c.name, nets, number[c.name], TABLE_BASE + number[c.name], tuple(names_here)))
            plan.hosts.extend(_hosts(file, router, i, c.name, c.hosts, nets[0], segment_name(router, c.name, 0), names))
        plan.by_router[router] = tuple(contexts)
        plan.interfaces[router] = ifaces
    if spec.context_method == "tunnel-in-tunnel":
        plan.inner_block = _inner_block(file, underlay, every)
    if spec.context_method == "hsvpn":
        for router, node in spec.nodes.items():
            if node.contexts and node.lan:
                # the tagged SA carries contexts only; a plain LAN beside them would have no tag
                raise fail(f"nodes.{router}.lan", "with context_method hsvpn a router with contexts carries only "
                           "contexts: put this LAN into a context (or use per-network or tunnel-in-tunnel)")
            if node.contexts and (node.dataplane or spec.defaults.dataplane) == "xfrm":
                raise fail(
                    f"nodes.{router}.dataplane",
                    "context_method hsvpn needs the userspace engine (the kernel's XFRM builds the ESP "
                    "trailer itself, so it cannot carry the context tag): use dataplane auto or userspace",
                )
    return plan


def _check_hubs_carry(spec: TopologySpec, file: str, hubs_of: dict[str, tuple[str, ...]]) -> None:
    """A branch's context crosses its hubs: each hub must have a context of that name."""
    for router, node in spec.nodes.items():
        for i, c in enumerate(node.contexts or ()):
            for hub in hubs_of.get(router, ()):
                theirs = [h.name for h in spec.nodes[hub].contexts or ()]
                if c.name not in theirs:
                    listed = ", ".join(theirs) or "none"
                    raise TopologyError(
                        file, f"nodes.{router}.contexts.{i}.name",
                        f"hub {hub!r} has no context {c.name!r} to carry it (its contexts: {listed})",
                    )


def _hosts(
    file: str, router: str, i: int, context: str, hosts: int | list[str] | None,
    lan: IPv4Network, segment: str, names: set[str],
) -> list[ContextHost]:
    where = f"nodes.{router}.contexts.{i}.hosts"
    if not hosts:
        return []
    if isinstance(hosts, int):
        wanted = [f"{router}-{context}{k}" for k in range(1, hosts + 1)]
        for g in wanted:
            if not NODE_NAME_RE.match(g):
                raise TopologyError(
                    file, where, f"host name {g!r} would be longer than 15 characters; list the host names instead"
                )
    else:
        wanted = list(hosts)
    first, last = int(lan.network_address) + FIRST_HOST_OFFSET, int(lan.broadcast_address) - 1
    if first + len(wanted) - 1 > last:
        raise TopologyError(
            file, where, f"LAN {lan} is too small for {len(wanted)} hosts (host addresses start at .{FIRST_HOST_OFFSET})"
        )
    out = []
    for k, name in enumerate(wanted):
        if name in names:
            raise TopologyError(file, where, f"host name {name!r} is already used by another node")
        names.add(name)
        addr = IPv4Interface(f"{IPv4Address(first + k)}/{lan.prefixlen}")
        out.append(ContextHost(name, router, context, addr, segment, lan.network_address + 1))
    return out


def _inner_block(file: str, underlay: IPv4Network, lans: list[IPv4Network]) -> IPv4Network:
    for block in INNER_CANDIDATES:
        if not block.overlaps(underlay) and not any(block.overlaps(n) for n in lans):
            return block
    raise TopologyError(
        file, "context_method", "tunnel-in-tunnel needs a free /16 in 100.64.0.0/10 for its inner addresses, "
        "and the LANs cover all of them"
    )


def inner_endpoint(block: IPv4Network, router_index: int) -> IPv4Address:
    """tunnel-in-tunnel: the router's VXLAN endpoint (a /32 on lo), protected by the one IPsec tunnel."""
    return block.network_address + router_index + 1


def inner_transit(block: IPv4Network, number: int, router_index: int) -> IPv4Interface:
    """tunnel-in-tunnel: the router's address on context `number`'s VXLAN segment (a /24)."""
    return IPv4Interface(f"{block.network_address + (number << 8) + router_index + 1}/24")
