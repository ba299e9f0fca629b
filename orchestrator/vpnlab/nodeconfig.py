"""Resolved Lab + router Node -> the NodeConfig the agent in that container reads.

The classic star: a hub answers every branch attached to it, and each tunnel carries the traffic
between that branch's LANs and everything else the hub reaches (its own LANs and the LANs of its
other branches), so branch-to-branch traffic goes through the hub. A branch starts IKE towards each
of its hubs. Gateways behave like hubs until the load balancer exists.

Hubs of one lab reach each other: every pair of hubs has a tunnel (the one first in the file
starts it), which carries each hub's LANs and those of the branches attached to it alone, so a
branch on one hub reaches the sites of every other hub (docs/topology.md, "Hub to hub").
A NAT device gets a config of its own (natconfig.py).
"""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network

from vpnlab_agent.config import PKI_DIR, IkeConfig, InterfaceConfig, NodeConfig, PeerConfig, PkiConfig, RouteConfig

from vpnlab import cluster_config
from vpnlab.errors import LabError
from vpnlab.topology.model import HUB_ROLES, Lab, Node, branches_of


def build_node_config(lab: Lab, node: Node) -> NodeConfig:
    if node.role == "nat":
        from vpnlab.natconfig import nat_device_config

        return nat_device_config(lab, node)
    if not node.is_router:
        raise LabError(f"node {node.name} is a host: only routers get a node config")
    from vpnlab.nodeconfig_contexts import context_extension, context_peers

    if node.role == "upstream":
        return cluster_config.upstream_config(lab, node)
    if node.role == "swarm":
        return cluster_config.swarm_config(lab, node)
    if node.role in HUB_ROLES:
        others = list(branches_of(lab, node.name))
        plain = [_hub_peer(lab, node, b) for b in others]
    else:
        others = [lab.node(h) for h in node.hubs if cluster_config.cluster_named(lab, h) is None]
        plain = [_branch_peer(lab, node, h) for h in others]
    peers = tuple(p for other, star in zip(others, plain) for p in context_peers(lab, node, other, star))
    peers += tuple(_hub_to_hub_peer(lab, node, other) for other in other_hubs(lab, node))
    # a branch attached to a cluster knows only its virtual address (docs/loadbalancer.md)
    peers += tuple(cluster_config.cluster_peer(lab, node, c) for h in node.hubs
                   if (c := cluster_config.cluster_named(lab, h)) is not None)
    config = NodeConfig(
        lab=lab.name,
        name=node.name,
        role=node.role,  # type: ignore[arg-type]  # routers only, checked above
        implementation=node.implementation,  # type: ignore[arg-type]
        public_address=_str(node.public_address),
        interfaces=tuple(
            InterfaceConfig(
                name=i.name,
                kind="wan" if i.name.startswith("wan") else "lan",
                addresses=(str(i.address),),
            )
            for i in node.interfaces
        ),
        routes=_routes(node) or cluster_config.underlay_routes(lab, node),  # behind NAT: the default route covers it
        lan_subnets=_cidrs(node.lan_subnets),
        dataplane=node.dataplane,
        ike=ike_config(lab, node, peers),
        extensions=_extensions(mesh=mesh_extension(lab, node), contexts=context_extension(lab, node, others),
                               redirect=cluster_config.redirect_extension(lab, node)),
    )
    if node.cluster is not None:
        return cluster_config.member_config(lab, node, config)
    return config


DUAL_HUB_DPD_RETRIES = 3


def _extensions(**parts: dict[str, object]) -> dict[str, object]:
    """Only "mesh" always; the others when the node uses them, so plain configs stay as they were."""
    return {k: v for k, v in parts.items() if v or k == "mesh"}


def ike_config(lab: Lab, node: Node, peers: tuple[PeerConfig, ...]) -> IkeConfig:
    c = node.crypto
    uses_cert = c.auth == "cert" or any(p.auth == "cert" for p in peers)
    return IkeConfig(
        local_id=node.name,
        psk=lab.psk or "",
        ike_proposals=c.ike_proposals,
        esp_proposals=c.esp_proposals,
        ike_lifetime_s=c.ike_lifetime_s,
        child_lifetime_s=c.child_lifetime_s,
        dpd_interval_s=c.dpd_interval_s,
        nat_keepalive_s=c.nat_keepalive_s,
        peers=peers,
        auth=c.auth,
        rekey_margin_s=c.rekey_margin_s,
        fragmentation=c.fragmentation,
        fragment_size=c.fragment_size,
        pki=PkiConfig() if uses_cert else None,
        # a branch on two hubs fails over within dpd_interval + 1.5 s (docs/topology.md, "Hub to hub"),
        # and so does one on a cluster: back through the virtual address (docs/loadbalancer.md)
        dpd_retries=DUAL_HUB_DPD_RETRIES if node.role == "branch" and (
            len(node.hubs) > 1 or any(cluster_config.cluster_named(lab, h) for h in node.hubs)) else None,
    )


def peer_cert_file(name: str) -> str:
    """Where a router finds the certificate the lab issued to its peer `name` (vpnlab.pki)."""
    return f"{PKI_DIR}/peers/{name}.pem"


def _tunnel(lab: Lab, node: Node, peer: Node) -> dict[str, object]:
    """The PeerConfig keys both ends of one tunnel must agree on: auth method, key, certificate."""
    uses_psk = "psk" in (node.crypto.auth, peer.crypto.auth)
    return {
        "auth": peer.crypto.auth,
        "psk": lab.psk_between(node.name, peer.name) if uses_psk else None,
        "cert_file": peer_cert_file(peer.name) if peer.crypto.auth == "cert" else None,
    }


def mesh_extension(lab: Lab, node: Node) -> dict[str, object]:
    """What the agent's mesh service reads (vpnlab_agent/mesh/config.py; docs/mesh.md).

    A hub relays mesh signalling when any agent branch attached to it has mesh enabled, whatever
    its own `enabled` says (hubs never build shortcuts themselves), and then also counts what it
    forwards between each pair of branches; with mesh off it counts only when asked (count_pairs,
    set by `measure hub-traffic`), so a star lab's hub runs no mesh service at all. A branch learns
    each hub's own LANs, because sessions from those never trigger a shortcut.
    """
    ext: dict[str, object] = dataclasses.asdict(node.mesh)
    ext["behind_nat"] = node.behind_nat
    # A lab shortcut: the agent measures its NAT type where it can (two hubs), else takes this one.
    device = lab.node(node.nat_device) if node.nat_device else None
    ext["nat_type"] = device.nat.type if device is not None and device.nat is not None else None
    count_pairs = ext.pop("count_pairs")
    if node.role in HUB_ROLES:
        ext["relay"] = any(b.mesh.enabled and b.implementation == "agent" for b in branches_of(lab, node.name))
        ext["count_pairs"] = bool(ext["relay"] or count_pairs)
    else:
        ext["hub_lans"] = {h: list(_cidrs(lab.node(h).lan_subnets)) for h in node.hubs
                           if cluster_config.cluster_named(lab, h) is None}
    from vpnlab.nodeconfig_contexts import context_mesh

    ext.update(context_mesh(lab, node, ext))
    return ext


def other_hubs(lab: Lab, hub: Node) -> tuple[Node, ...]:
    """The lab's other hubs (role hub: gateways belong to clusters, not to the hub mesh).

    Only between agent hubs: strongSwan's kernel-libipsec refuses a branch child SA whose local
    selectors also cover another hub's site ("error installing route with policy"), so a
    strongSwan hub keeps its star of branch tunnels only; so does a libreswan hub (its kernel-only
    data plane carries nothing here, and its hub-to-hub tunnels are not what it is in a lab for)."""
    if hub.role != "hub" or hub.implementation != "agent":
        return ()
    return tuple(n for n in lab.routers
                 if n.role == "hub" and n.name != hub.name and n.implementation == "agent")


def hub_site(lab: Lab, hub: Node, without: tuple[str, ...] = ()) -> list[IPv4Network]:
    """A hub's LANs and those of its branches, leaving out branches also attached to `without`."""
    nets = list(hub.lan_subnets)
    for b in branches_of(lab, hub.name):
        if not any(h in b.hubs for h in without):
            nets.extend(b.lan_subnets)
    return nets


def reached_via_hub(lab: Lab, hub: Node, except_branch: str) -> tuple[IPv4Network, ...]:
    """What a hub offers one branch: its own LANs, the LANs of its other branches and, over the
    hub-to-hub tunnels, the sites of the lab's other hubs that the branch is not attached to itself."""
    branch = lab.node(except_branch)
    nets = [n for n in hub_site(lab, hub) if n not in branch.lan_subnets]
    for other in other_hubs(lab, hub):
        if other.name not in branch.hubs:
            nets.extend(n for n in hub_site(lab, other, without=(hub.name, *branch.hubs)) if n not in nets)
    return tuple(nets)


def _hub_peer(lab: Lab, hub: Node, branch: Node) -> PeerConfig:
    return PeerConfig(
        name=branch.name,
        remote_id=branch.name,
        address=_str(branch.public_address),  # None behind NAT: only the branch can start
        initiate=False,
        local_ts=_cidrs(reached_via_hub(lab, hub, branch.name)),
        remote_ts=_cidrs(branch.lan_subnets),
        **_tunnel(lab, hub, branch),  # type: ignore[arg-type]
    )


def _hub_to_hub_peer(lab: Lab, hub: Node, other: Node) -> PeerConfig:
    names = [n.name for n in lab.nodes]
    return PeerConfig(
        name=other.name,
        remote_id=other.name,
        address=_str(other.public_address),
        initiate=names.index(hub.name) < names.index(other.name),
        local_ts=_cidrs(tuple(hub_site(lab, hub, without=(other.name,)))),
        remote_ts=_cidrs(tuple(hub_site(lab, other, without=(hub.name,)))),
        **_tunnel(lab, hub, other),  # type: ignore[arg-type]
    )


def _routes(node: Node) -> tuple[RouteConfig, ...]:
    """A branch behind NAT reaches the internet through its NAT device."""
    if node.nat_device is None or node.gateway is None:
        return ()
    return (RouteConfig(dst="0.0.0.0/0", via=str(node.gateway)),)


def _branch_peer(lab: Lab, branch: Node, hub: Node) -> PeerConfig:
    return PeerConfig(
        name=hub.name,
        remote_id=hub.name,
        address=_str(hub.public_address),
        initiate=True,
        local_ts=_cidrs(branch.lan_subnets),
        remote_ts=_cidrs(reached_via_hub(lab, hub, branch.name)),
        **_tunnel(lab, branch, hub),  # type: ignore[arg-type]
    )


def _cidrs(nets: tuple[IPv4Network, ...]) -> tuple[str, ...]:
    return tuple(str(n) for n in nets)


def _str(value: object | None) -> str | None:
    return None if value is None else str(value)
