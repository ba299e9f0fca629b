"""The "nat" kind: a NAT device between branches' private WANs and the internet.

The same container and agent as a router (forwarding on); the node config has role "nat" and no
IKE, and the agent's NAT service loads the nftables rules (vpnlab_agent/nat).
"""

from __future__ import annotations

from vpnlab.kinds.base import ContainerSpec
from vpnlab.kinds.router import router_spec
from vpnlab.topology.model import Lab, Node


class NatKind:
    name = "nat"

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec:
        if node.role != "nat":
            raise ValueError(f"node {node.name} is not a NAT device")
        return router_spec(lab, node)
