"""Resolved Lab + NAT device Node -> the NodeConfig its agent reads (vpnlab_agent/nat).

A NAT device runs the same agent as a router, without IKE: the agent configures wan0 (public) and
lan0 (inside), and its NAT service loads the nftables rules for the device's type and mapping
timeout. `extensions.nat` is that service's whole input.
"""

from __future__ import annotations

from vpnlab_agent.config import InterfaceConfig, NodeConfig

from vpnlab import cluster_config
from vpnlab.topology.model import Lab, Node


def nat_device_config(lab: Lab, node: Node) -> NodeConfig:
    assert node.nat is not None and node.public_address is not None
    inside = [i for i in node.interfaces if i.name != "wan0"][0]
    return NodeConfig(
        lab=lab.name,
        name=node.name,
        role="nat",
        implementation="nat",
        public_address=str(node.public_address),
        interfaces=tuple(
            InterfaceConfig(name=i.name, kind="wan" if i.name == "wan0" else "lan", addresses=(str(i.address),))
            for i in node.interfaces
        ),
        routes=cluster_config.underlay_routes(lab, node),  # clusters' segments sit behind their upstream
        lan_subnets=(str(node.nat.inside),),
        extensions={
            "nat": {
                "type": node.nat.type,
                "mapping_timeout_s": node.nat.mapping_timeout_s,
                "inside": str(node.nat.inside),
                "inside_if": inside.name,
                "outside_if": "wan0",
                "public": str(node.public_address),
                # lab order: a shared (CGN) endpoint-independent device maps the n-th branch's
                # IKE ports to fixed public ports, so every peer sees the same mapping
                "branches": [
                    {"name": b, "address": str(lab.node(b).interfaces[0].address.ip)} for b in node.nat.branches
                ],
            }
        },
    )
