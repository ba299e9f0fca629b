"""What the mesh logic needs to know about this router, read from NodeConfig.extensions["mesh"].

The orchestrator (vpnlab/nodeconfig.py) writes the extension; see docs/mesh.md for its keys.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.mesh.licence import mesh_limit

DEFAULT_IDLE_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 10.0  # a request or a build not up by then is given up (and held down)
HOLDDOWN_S = 30.0  # after a refusal or failure, new sessions from that subnet wait this long
MAX_PENDING = 32  # requests and builds in flight at once


def mesh_wanted(config: NodeConfig) -> bool:
    """Whether this router runs the mesh service (decided here, so that a router that does not never
    imports it: the service and its logic are ~0.5 MiB of an agent's memory)."""
    ext = config.extensions.get("mesh") or {}
    if config.implementation != "agent" or config.ike is None:
        return False
    if config.role == "branch":
        return bool(ext.get("enabled"))
    # A hub runs it to relay, or to count the star's branch-to-branch traffic when asked (measure).
    return bool(config.ike.peers) and bool(ext.get("relay") or ext.get("count_pairs"))


@dataclass(frozen=True)
class HubView:
    """One hub as a branch sees it: the hub's own LANs, and everything reached through its tunnel."""

    name: str
    own_lans: tuple[str, ...]
    reached: tuple[str, ...]


@dataclass(frozen=True)
class MeshConfig:
    name: str
    role: str
    enabled: bool
    limit: int
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    public_address: str | None = None
    lan_subnets: tuple[str, ...] = ()
    router_addresses: tuple[str, ...] = ()  # our own LAN addresses: sessions to them never trigger
    hubs: tuple[HubView, ...] = ()  # branch side
    branches: dict[str, tuple[str, ...]] = field(default_factory=dict)  # hub side: branch -> its LANs
    relay: bool = False  # hub side: relay mesh signalling between our branches
    hole_punching: bool = False  # branch behind NAT: shortcuts through hole punching (mesh/punch.py)
    nat_type: str | None = None  # the topology's NAT device type (a lab shortcut; punch.NatView)
    whole_site: bool = False  # routing contexts: a shortcut carries every LAN of both sites (docs/hsvpn.md)
    request_timeout_s: float = REQUEST_TIMEOUT_S
    holddown_s: float = HOLDDOWN_S
    max_pending: int = MAX_PENDING

    @classmethod
    def from_node(cls, node: NodeConfig) -> MeshConfig:
        ext: dict[str, Any] = dict(node.extensions.get("mesh") or {})
        peers = node.ike.peers if node.ike else ()
        hub_lans: dict[str, list[str]] = ext.get("hub_lans") or {}
        hubs = tuple(
            HubView(p.name, tuple(hub_lans.get(p.name, ())), tuple(p.remote_ts))
            for p in peers if p.name in hub_lans
        ) if node.role == "branch" else ()
        branches = {p.name: tuple(p.remote_ts) for p in peers} if node.role != "branch" else {}
        routers = tuple(
            str(ipaddress.ip_interface(a).ip) for i in node.interfaces if i.kind == "lan" for a in i.addresses
        )
        return cls(
            name=node.name,
            role=node.role,
            enabled=bool(ext.get("enabled", False)),
            limit=mesh_limit(node.role, ext.get("device"), ext.get("max_tunnels")),
            idle_timeout_s=float(ext.get("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)),
            public_address=node.public_address,
            lan_subnets=tuple(ext.get("lan_subnets") or node.lan_subnets),  # contexts: their LANs
            router_addresses=routers,
            hubs=hubs,
            branches=branches,
            relay=bool(ext.get("relay", False)),
            hole_punching=bool(ext.get("hole_punching", False)),
            nat_type=ext.get("nat_type") or None,
            whole_site=bool(ext.get("whole_site", False)),
        )
