"""Planning of gateway clusters (IKEv2 load balancer, docs/loadbalancer.md); called by plan.py.

A cluster's members share one L2 segment (`cl-<cluster>`, bridge of its own) that carries VRRP,
the status multicast and their IKE traffic. An upstream router (planned as `<cluster>-up` unless
named) has `wan0` on the internet and `cl0` on the segment; the segment is a public prefix that
every other router on the internet reaches through it. Addresses on the segment:
  .1 the upstream router, .2 the virtual address (unless `address` is given), members from .10 up.
Members have no `wan0`: their own LANs as usual, then `cl0`. Branches name the cluster in `hubs:`
and know only the virtual address; a member is never named as a hub directly.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from vpnlab.topology.model import Cluster, Interface, Node
from vpnlab.topology.schema import NODE_NAME_RE, ClusterSpec, TopologySpec, parse_cidr

# Public (documentation) prefixes a segment is planned from, in order, when `segment` is omitted.
PLANNED_SEGMENTS = ("203.0.113.0/24", "192.0.2.0/24")
CLUSTER_IFACE = "cl0"
FIRST_MEMBER_OFFSET = 10
DEFAULT_PRIORITY, PRIORITY_STEP = 200, 10


def segment_name(cluster: str) -> str:
    return f"cl-{cluster}"


def upstream_name(cname: str, spec: ClusterSpec) -> str:
    return spec.upstream.name or f"{cname}-up"


def cluster_key(psk: str, cname: str, spec: ClusterSpec) -> str:
    """The status-message key: `key` if given, else derived from the lab secret (docs say why not to)."""
    if spec.key is not None:
        return spec.key
    return hmac.new(psk.encode(), f"vpnlab cluster key {cname}".encode(), hashlib.sha256).hexdigest()


def hub_candidates(spec: TopologySpec) -> list[str]:
    """What a branch may name in `hubs:`: hubs and gateways outside clusters, then the clusters."""
    members = {m for c in spec.clusters.values() for m in c.members}
    plain = [n for n, s in spec.nodes.items() if s.role in ("hub", "gateway") and n not in members]
    return plain + list(spec.clusters)


def member_of(spec: TopologySpec, name: str) -> str | None:
    for cname, c in spec.clusters.items():
        if name in c.members:
            return cname
    return None


def check_names(spec: TopologySpec, fail: Any) -> None:
    """Cluster and upstream names share the node namespace (they become IKE identities, containers)."""
    taken: dict[str, str] = {n: "a node" for n in spec.nodes}
    for cname, c in spec.clusters.items():
        if cname in taken:
            raise fail(f"clusters.{cname}", f"name {cname!r} is already used by {taken[cname]}")
        taken[cname] = f"cluster {cname}"
    for name, node in spec.nodes.items():
        if node.contexts and any(h in spec.clusters for h in node.hubs or ()):
            raise fail(f"nodes.{name}.contexts", "routing contexts across a gateway cluster are not supported")
    for cname, c in spec.clusters.items():
        up = upstream_name(cname, c)
        where = f"clusters.{cname}.upstream.name" if c.upstream.name else f"clusters.{cname}"
        if not NODE_NAME_RE.match(up):
            raise fail(where, f"planned upstream name {up!r} is too long; give upstream: {{name: ...}}")
        if up in taken:
            raise fail(where, f"upstream router name {up!r} is already used by {taken[up]}")
        taken[up] = f"the upstream router of {cname}"
        if c.swarm is not None:
            sw = swarm_name(cname)
            if not NODE_NAME_RE.match(sw) or sw in taken:
                raise fail(f"clusters.{cname}.swarm", f"swarm node name {sw!r} is too long or already used")
            taken[sw] = f"the swarm of {cname}"
        for key in ("capacity", "weights"):
            value = getattr(c, key)
            if isinstance(value, dict):
                _only_members(fail, f"clusters.{cname}.{key}", value, c.members)
        if c.vrrp.priorities:
            _only_members(fail, f"clusters.{cname}.vrrp.priorities", c.vrrp.priorities, c.members)
        if c.metric == "capacity":
            caps = _per_member(c.capacity, c.members, 0)
            missing = [m for m in c.members if caps[m] <= 0]
            if missing:
                raise fail(f"clusters.{cname}.capacity",
                           f"metric capacity needs a capacity above 0 for every member (missing: {', '.join(missing)})")


def _only_members(fail: Any, where: str, values: dict[str, int], members: list[str]) -> None:
    for name in values:
        if name not in members:
            raise fail(where, f"{name!r} is not a member (members: {', '.join(members)})")


def _per_member(value: int | dict[str, int] | None, members: Iterable[str], default: int) -> dict[str, int]:
    if isinstance(value, dict):
        return {m: value.get(m, default) for m in members}
    return {m: default if value is None else value for m in members}


def upstream_publics(spec: TopologySpec) -> list[tuple[str, str, IPv4Address | None]]:
    """(where, node name, explicit public address or None) of each cluster's upstream router and
    swarm node, in file order."""
    out: list[tuple[str, str, IPv4Address | None]] = []
    for c, s in spec.clusters.items():
        out.append((f"clusters.{c}.upstream.public", upstream_name(c, s),
                    None if s.upstream.public is None else IPv4Address(s.upstream.public)))
        if s.swarm is not None:
            out.append((f"clusters.{c}.swarm", swarm_name(c), None))
    return out


def swarm_name(cname: str) -> str:
    return f"{cname}-sw"


def plan_segments(spec: TopologySpec, underlay: IPv4Network, lans: list[tuple[IPv4Network, str]],
                  fail: Any) -> dict[str, IPv4Network]:
    taken = [(underlay, "the underlay (internet)")] + [(n, f"{o}'s LAN") for n, o in lans]
    for cname, c in spec.clusters.items():
        if c.swarm is not None:
            net = parse_cidr(c.swarm.prefix)
            for other, owner in taken:
                if net.overlaps(other):
                    raise fail(f"clusters.{cname}.swarm.prefix", f"prefix {net} overlaps {owner} {other}")
            taken.append((net, f"cluster {cname}'s swarm"))
    out: dict[str, IPv4Network] = {}
    for cname, c in spec.clusters.items():
        if c.segment is None:
            continue
        net = parse_cidr(c.segment)
        where = f"clusters.{cname}.segment"
        if net.prefixlen > 28:
            raise fail(where, f"segment {net} is too small (use a /28 or larger)")
        for other, owner in taken:
            if net.overlaps(other):
                raise fail(where, f"segment {net} overlaps {owner} {other}")
        taken.append((net, f"cluster {cname}'s segment"))
        out[cname] = net
    for cname, c in spec.clusters.items():
        if cname in out:
            continue
        for cidr in PLANNED_SEGMENTS:
            net = IPv4Network(cidr)
            if not any(net.overlaps(t) for t, _ in taken):
                break
        else:
            raise fail(f"clusters.{cname}", "no free documentation /24 left for the segment; give 'segment'")
        taken.append((net, f"cluster {cname}'s segment"))
        out[cname] = net
    return out


def plan_cluster(cname: str, c: ClusterSpec, segment: IPv4Network, psk: str, fail: Any) -> Cluster:
    base = int(segment.network_address)
    upstream_addr = IPv4Address(base + 1)
    where = f"clusters.{cname}.address"
    if c.address is not None:
        vip = IPv4Address(c.address)
        if vip not in segment or vip in (segment.network_address, segment.broadcast_address):
            raise fail(where, f"{vip} is not a usable address of the cluster's segment {segment}")
        if vip == upstream_addr:
            raise fail(where, f"{vip} is the upstream router's address on the segment")
    else:
        vip = IPv4Address(base + 2)
    addresses: dict[str, IPv4Address] = {}
    candidate = base + FIRST_MEMBER_OFFSET
    for m in c.members:
        while IPv4Address(candidate) == vip:
            candidate += 1
        if candidate >= int(segment.broadcast_address):
            raise fail(f"clusters.{cname}.segment", f"segment {segment} is too small for {len(c.members)} members")
        addresses[m] = IPv4Address(candidate)
        candidate += 1
    priorities = {m: max(1, DEFAULT_PRIORITY - PRIORITY_STEP * i) for i, m in enumerate(c.members)}
    priorities.update(c.vrrp.priorities or {})
    return Cluster(
        name=cname, members=tuple(c.members), virtual_address=vip, segment=segment,
        segment_name=segment_name(cname), upstream=upstream_name(cname, c), upstream_address=upstream_addr,
        member_addresses=addresses, redirect=c.redirect, metric=c.metric,
        capacity=_per_member(c.capacity, c.members, 0), weights=_per_member(c.weights, c.members, 1),
        priorities=priorities, vrrp_version=c.vrrp.version, advert_int_s=c.vrrp.advert_int,
        preempt=c.vrrp.preempt, virtual_router_id=c.vrrp.virtual_router_id,
        status_interval_s=c.status_interval, key=cluster_key(psk, cname, c),
        swarm=swarm_name(cname) if c.swarm else "", swarm_clients=c.swarm.clients if c.swarm else 0,
        swarm_legacy=c.swarm.legacy if c.swarm else 0,
        swarm_prefix=parse_cidr(c.swarm.prefix) if c.swarm else None,
    )


def member_interface(cluster: Cluster, member: str) -> Interface:
    assert cluster.segment is not None
    addr = cluster.member_addresses[member]
    return Interface(CLUSTER_IFACE, cluster.segment_name, IPv4Interface(f"{addr}/{cluster.segment.prefixlen}"))


def swarm_node(cluster: Cluster, public: IPv4Address, underlay: IPv4Network, underlay_segment: str) -> Node:
    return Node(
        name=cluster.swarm, role="swarm", implementation="agent",
        interfaces=(Interface("wan0", underlay_segment, IPv4Interface(f"{public}/{underlay.prefixlen}")),),
        public_address=public, cluster=cluster.name,
    )


def swarm_clients(cluster: Cluster) -> list[tuple[str, str, str]]:
    """(identity, address, inner /32) of each swarm client: addresses from the prefix's .1 up, inner
    selectors from 172.31.0.0/16 (never routed: no traffic flows, a child SA needs a selector)."""
    assert cluster.swarm_prefix is not None
    base = int(cluster.swarm_prefix.network_address)
    return [(f"sw{i:04d}", str(IPv4Address(base + 1 + i)), f"{IPv4Address(int(IPv4Address('172.31.0.1')) + i)}/32")
            for i in range(cluster.swarm_clients)]


def upstream_node(cluster: Cluster, public: IPv4Address, underlay: IPv4Network, underlay_segment: str) -> Node:
    assert cluster.segment is not None and cluster.upstream_address is not None
    return Node(
        name=cluster.upstream,
        role="upstream",
        implementation="agent",
        interfaces=(
            Interface("wan0", underlay_segment, IPv4Interface(f"{public}/{underlay.prefixlen}")),
            Interface(CLUSTER_IFACE, cluster.segment_name,
                      IPv4Interface(f"{cluster.upstream_address}/{cluster.segment.prefixlen}")),
        ),
        public_address=public,
        cluster=cluster.name,
    )
