"""Routing contexts in the node config: `extensions["contexts"]` and the IKE peers per method.

The method decides how the contexts a site pair shares cross the tunnel (docs/hsvpn.md):
- hsvpn: one peer (one IKE SA, one child SA) whose selectors are the union of every context's; the
  agent's HSVPN extension negotiates which tag means which context and keeps them apart;
- tunnel-in-tunnel: one peer whose selectors are the two routers' VXLAN endpoints; each context
  is a VXLAN (own VNI) between those endpoints, inside the tunnel;
- per-network: one peer per context ("<peer>.<context>", identities "<context>.<node>"), each with
  that context's selectors only, plus the plain peer when both sides have plain LANs.
Plain LANs (outside contexts) ride as before: with the hsvpn/tunnel-in-tunnel peer, or their own.
"""

from __future__ import annotations

from ipaddress import IPv4Network

from vpnlab_agent.config import PeerConfig
from vpnlab_agent.contexts.config import ContextConfig, ContextsConfig, Reach

from vpnlab.topology.contexts import VNI_BASE, inner_endpoint, inner_transit
from vpnlab.topology.model import HUB_ROLES, Lab, Node, branches_of


def _lans(node: Node, context: str) -> list[IPv4Network]:
    for c in node.contexts:
        if c.name == context:
            return list(c.lans)
    return []


def _index(lab: Lab, node: Node) -> int:
    return [r.name for r in lab.routers].index(node.name)


def _reach(lab: Lab, me: Node, other: Node, context: str) -> tuple[list[IPv4Network], list[IPv4Network]]:
    """(our side, their side) of `context` on the tunnel between me and other (the star)."""
    hub, branch = (me, other) if me.role in HUB_ROLES else (other, me)
    hub_side = _lans(hub, context)
    for b in branches_of(lab, hub.name):
        if b.name != branch.name:
            hub_side.extend(_lans(b, context))
    branch_side = _lans(branch, context)
    return (hub_side, branch_side) if me is hub else (branch_side, hub_side)


def shared_contexts(me: Node, other: Node) -> list[str]:
    theirs = {c.name for c in other.contexts}
    return [c.name for c in me.contexts if c.name in theirs]


def context_extension(lab: Lab, node: Node, tunnel_peers: list[Node]) -> dict[str, object]:
    """`extensions["contexts"]` for a router ({} when it has no contexts)."""
    if not node.contexts:
        return {}
    block = lab.inner_block if lab.context_method == "tunnel-in-tunnel" else None
    me = _index(lab, node)
    contexts = tuple(
        ContextConfig(
            name=c.name, number=c.number, table=c.table, interfaces=c.interfaces,
            lans=tuple(str(n) for n in c.lans),
            transit=str(inner_transit(block, c.number, me)) if block else None,
            vni=VNI_BASE + c.number if block else 0,
        )
        for c in node.contexts
    )
    reach: list[Reach] = []
    for other in tunnel_peers:
        for name in shared_contexts(node, other):
            local, remote = _reach(lab, node, other, name)
            number = next(c.number for c in node.contexts if c.name == name)
            reach.append(Reach(
                peer=peer_name(lab, other.name, name), context=name,
                local=tuple(str(n) for n in local), remote=tuple(str(n) for n in remote),
                via=str(inner_transit(block, number, _index(lab, other)).ip) if block else None,
                endpoint=str(inner_endpoint(block, _index(lab, other))) if block else None,
            ))
    endpoint = str(inner_endpoint(block, me)) if block else None
    return ContextsConfig(lab.context_method, contexts, tuple(reach), endpoint).to_dict()


def peer_name(lab: Lab, other: str, context: str) -> str:
    """The IKE peer that carries `context` to `other`: its own peer only with per-network."""
    return f"{other}.{context}" if lab.context_method == "per-network" else other


def context_peers(lab: Lab, node: Node, other: Node, plain: PeerConfig) -> list[PeerConfig]:
    """The IKE peers towards `other` once contexts are in play (`plain`: the star's own peer)."""
    shared = shared_contexts(node, other)
    if not shared:
        return [plain]
    method = lab.context_method
    if method == "per-network":
        peers = [plain] if plain.local_ts and plain.remote_ts else []
        for name in shared:
            local, remote = _reach(lab, node, other, name)
            peers.append(PeerConfig(
                name=f"{other.name}.{name}", remote_id=f"{name}.{other.name}", address=plain.address,
                initiate=plain.initiate, local_ts=_cidrs(local), remote_ts=_cidrs(remote),
                local_id=f"{name}.{node.name}",
            ))
        return peers
    if method == "tunnel-in-tunnel":
        assert lab.inner_block is not None
        local = (f"{inner_endpoint(lab.inner_block, _index(lab, node))}/32",)
        remote = (f"{inner_endpoint(lab.inner_block, _index(lab, other))}/32",)
    else:  # hsvpn: every context's selectors on the one child SA
        local_nets: list[IPv4Network] = []
        remote_nets: list[IPv4Network] = []
        for name in shared:
            lo, re = _reach(lab, node, other, name)
            local_nets += lo
            remote_nets += re
        local, remote = _cidrs(local_nets), _cidrs(remote_nets)
    # The star's plain selectors only where both sides have plain LANs: a hub's plain LANs (and its
    # plain branches') mean nothing to a branch that has only contexts.
    plain_local, plain_remote = (plain.local_ts, plain.remote_ts) if plain.local_ts and plain.remote_ts else ((), ())
    return [PeerConfig(
        name=plain.name, remote_id=plain.remote_id, address=plain.address, initiate=plain.initiate,
        local_ts=_dedup(plain_local + local), remote_ts=_dedup(plain_remote + remote),
    )]


def _cidrs(nets: list[IPv4Network]) -> tuple[str, ...]:
    return _dedup(tuple(str(n) for n in nets))


def _dedup(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def context_mesh(lab: Lab, node: Node, mesh: dict[str, object]) -> dict[str, object]:
    """Mesh keys for a branch with contexts (docs/hsvpn.md): its LANs are its contexts' LANs, a
    shortcut carries every one of them (whole_site), and each hub's own LANs include its contexts'."""
    if not node.contexts or node.role in HUB_ROLES:
        return {}
    lans = list(node.lan_subnets) + [n for c in node.contexts for n in c.lans]
    hub_lans = {
        h: _dedup(tuple(str(n) for n in lab.node(h).lan_subnets) + tuple(str(n) for c in lab.node(h).contexts for n in c.lans))
        for h in (mesh.get("hub_lans") or {})  # type: ignore[union-attr]
    }
    return {"lan_subnets": list(_cidrs(lans)), "whole_site": True, "hub_lans": {h: list(v) for h, v in hub_lans.items()}}
