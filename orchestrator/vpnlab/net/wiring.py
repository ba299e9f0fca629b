"""Which bridge and which veth port each container interface gets: pure naming, no netlink.

Linux names stop at 15 characters and node names may use all of them, so bridges and ports get
short positional names and carry the readable name in their ifalias.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vpnlab.topology.model import UNDERLAY, Lab


@dataclass(frozen=True)
class BridgePlan:
    name: str  # "inet" for the underlay, "l<i>" for LANs
    segment: str  # Segment.name, also the bridge's ifalias


@dataclass(frozen=True)
class PortPlan:
    node: str
    ifname: str  # name inside the container
    port: str  # fabric-side veth name, "p<node#>-<if#>"
    bridge: str
    alias: str  # "<node>:<ifname>", the port's ifalias

@dataclass(frozen=True)
class FabricPlan:
    bridges: tuple[BridgePlan, ...]
    ports: tuple[PortPlan, ...]

    def ports_of(self, node: str) -> tuple[PortPlan, ...]:
        return tuple(p for p in self.ports if p.node == node)


def interface_mac(lab: str, alias: str) -> str:
    """A fixed, locally administered MAC per lab interface ("<node>:<ifname>"). A node wired again
    after a restart keeps its MAC, so its neighbours' ARP caches stay right: a new MAC would
    blackhole traffic to it for the ~10 s the kernel takes to find a stale entry wrong."""
    digest = hashlib.sha256(f"{lab}/{alias}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def plan_fabric(lab: Lab) -> FabricPlan:
    bridges: dict[str, BridgePlan] = {}
    lan_index = 0
    for seg in lab.segments:
        if seg.name == UNDERLAY or seg.kind == "underlay":
            name = "inet"
        else:
            name = f"l{lan_index}"
            lan_index += 1
        bridges[seg.name] = BridgePlan(name=name, segment=seg.name)
    ports = []
    for n, node in enumerate(lab.nodes):
        for i, iface in enumerate(node.interfaces):
            if iface.segment not in bridges:
                raise ValueError(f"node {node.name}: interface {iface.name} on unknown segment {iface.segment!r}")
            ports.append(
                PortPlan(
                    node=node.name,
                    ifname=iface.name,
                    port=f"p{n}-{i}",
                    bridge=bridges[iface.segment].name,
                    alias=f"{node.name}:{iface.name}",
                )
            )
    return FabricPlan(bridges=tuple(bridges.values()), ports=tuple(ports))
