"""Node configs for gateway clusters (IKEv2 load balancer; docs/loadbalancer.md), used by nodeconfig.py.

- A member answers every branch attached to its cluster, under the cluster's name as IKE identity
  (clients know the cluster, not which member they end up on), and offers its own LANs; its
  `extensions["cluster"]` is what the agent's cluster service reads (VRRP, status, balancing).
- A branch attached to a cluster initiates to the virtual address and proposes every member's
  LANs; the member that serves it narrows them to its own (RFC 7296 §2.9). It follows redirects
  for that peer (`extensions["redirect"]`).
- The upstream router runs no IKE: interfaces and forwarding only.
- Every other router on the internet routes each cluster's segment via that cluster's upstream.
"""

from __future__ import annotations

import dataclasses

from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig, RouteConfig

from vpnlab.topology.clusters import swarm_clients
from vpnlab.topology.model import Cluster, Lab, Node

# A cluster's clients declare their member dead 3 DPD tries (1.5 s) after its check went unanswered,
# and go back through the virtual address: a killed member's clients are back within DPD + 2 s.
CLIENT_DPD_RETRIES = 3


def cluster_named(lab: Lab, name: str) -> Cluster | None:
    for c in lab.clusters:
        if c.name == name:
            return c
    return None


def member_lans(lab: Lab, cluster: Cluster) -> tuple[str, ...]:
    return tuple(str(n) for m in cluster.members for n in lab.node(m).lan_subnets)


def branches_of_cluster(lab: Lab, cluster: Cluster) -> tuple[Node, ...]:
    return tuple(n for n in lab.nodes if n.role == "branch" and cluster.name in n.hubs)


def interfaces(node: Node) -> tuple[InterfaceConfig, ...]:
    return tuple(InterfaceConfig(i.name, "wan" if i.name.startswith("wan") else "lan", (str(i.address),))
                 for i in node.interfaces)


def cluster_peer(lab: Lab, branch: Node, cluster: Cluster) -> PeerConfig:
    """A branch's peer for a cluster: the virtual address, the cluster's identity, all member LANs."""
    return PeerConfig(
        name=cluster.name, remote_id=cluster.name, address=str(cluster.virtual_address), initiate=True,
        local_ts=tuple(str(n) for n in branch.lan_subnets), remote_ts=member_lans(lab, cluster),
    )


def redirect_extension(lab: Lab, branch: Node) -> dict[str, object] | None:
    """The peers a branch announces REDIRECT_SUPPORTED to and follows redirects of: its clusters,
    and with `follow_redirects` its hubs too (e.g. a strongSwan gateway's `swanctl --redirect`)."""
    vips = {c.name: str(c.virtual_address) for h in branch.hubs if (c := cluster_named(lab, h))}
    if branch.follow_redirects:
        vips |= {h: str(n.public_address) for h in branch.hubs
                 if h not in vips and (n := lab.node(h)).public_address is not None}
    return {"peers": vips} if vips else None


def underlay_routes(lab: Lab, node: Node) -> tuple[RouteConfig, ...]:
    """Routes to each cluster's segment via its upstream router, for routers on the internet."""
    if not any(i.name == "wan0" for i in node.interfaces):
        return ()
    out = []
    for c in lab.clusters:
        if c.upstream == node.name:
            continue
        up = lab.node(c.upstream)
        out.append(RouteConfig(dst=str(c.segment), via=str(up.public_address)))
    return tuple(out)


def member_config(lab: Lab, node: Node, base: NodeConfig) -> NodeConfig:
    cluster = cluster_named(lab, node.cluster or "")
    assert cluster is not None
    own = tuple(str(n) for n in node.lan_subnets)
    peers = tuple(
        PeerConfig(name=b.name, remote_id=b.name, address=None if b.public_address is None else str(b.public_address),
                   initiate=False, local_ts=own, remote_ts=tuple(str(n) for n in b.lan_subnets))
        for b in branches_of_cluster(lab, cluster)
    ) + tuple(
        PeerConfig(name=name, remote_id=name, address=addr, initiate=False, local_ts=own, remote_ts=(inner,))
        for name, addr, inner in (swarm_clients(cluster) if cluster.swarm else ())
    )
    routes = [RouteConfig(dst="0.0.0.0/0", via=str(cluster.upstream_address))]
    return NodeConfig(
        lab=base.lab, name=node.name, role="gateway", implementation=base.implementation,
        public_address=str(cluster.member_addresses[node.name]), interfaces=interfaces(node),
        routes=tuple(routes), lan_subnets=own, dataplane=node.dataplane,
        ike=dataclasses.replace(base.ike, local_id=cluster.name, peers=peers) if base.ike else None,
        extensions={**base.extensions, "cluster": cluster_extension(lab, cluster, node)},
    )


def cluster_extension(lab: Lab, cluster: Cluster, node: Node) -> dict[str, object]:
    """What the member's cluster service reads (vpnlab_agent/cluster/config.py)."""
    assert cluster.segment is not None
    return {
        "name": cluster.name,
        "interface": "cl0",
        "virtual_address": f"{cluster.virtual_address}/{cluster.segment.prefixlen}",
        "members": {m: {"address": str(cluster.member_addresses[m]), "priority": cluster.priorities[m],
                        "capacity": cluster.capacity[m], "weight": cluster.weights[m]}
                    for m in cluster.members},
        "redirect": cluster.redirect,
        "metric": cluster.metric,
        "vrrp": {"version": cluster.vrrp_version, "advert_int_s": cluster.advert_int_s,
                 "preempt": cluster.preempt, "virtual_router_id": cluster.virtual_router_id},
        "status_interval_s": cluster.status_interval_s,
        "key": cluster.key,
    }


def upstream_config(lab: Lab, node: Node) -> NodeConfig:
    cluster = cluster_named(lab, node.cluster or "")
    routes = underlay_routes(lab, node)
    if cluster is not None and cluster.swarm:  # the swarm's client addresses sit behind its wan0
        routes += (RouteConfig(dst=str(cluster.swarm_prefix), via=str(lab.node(cluster.swarm).public_address)),)
    return NodeConfig(
        lab=lab.name, name=node.name, role="upstream", implementation="agent",
        public_address=None if node.public_address is None else str(node.public_address),
        interfaces=interfaces(node), routes=routes,
    )


def swarm_config(lab: Lab, node: Node) -> NodeConfig:
    """The swarm container: its clients' addresses on wan0, the cluster as its one peer."""
    cluster = cluster_named(lab, node.cluster or "")
    assert cluster is not None and cluster.swarm_prefix is not None
    clients = swarm_clients(cluster)
    wan = next(i for i in node.interfaces if i.name == "wan0")
    plen = cluster.swarm_prefix.prefixlen
    psk = lab.psk_between(cluster.members[0], node.name) or ""
    return NodeConfig(
        lab=lab.name, name=node.name, role="swarm", implementation="agent",
        public_address=str(node.public_address),
        interfaces=(InterfaceConfig("wan0", "wan", (str(wan.address), *(f"{a}/{plen}" for _, a, _ in clients))),),
        routes=underlay_routes(lab, node),
        ike=IkeConfig(local_id=node.name, psk=psk, dpd_retries=CLIENT_DPD_RETRIES, peers=(
            PeerConfig(cluster.name, cluster.name, str(cluster.virtual_address), True, (), member_lans(lab, cluster)),)),
        extensions={"swarm": {"clients": [list(c) for c in clients], "legacy": cluster.swarm_legacy}},
    )
