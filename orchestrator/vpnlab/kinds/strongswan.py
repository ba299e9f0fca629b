"""The "strongswan" kind: the same router container, but the agent hands IKE and ESP to charon.

The container and its command are those of the agent kind; NodeConfig.implementation is
"strongswan", and the agent renders swanctl.conf from it and runs charon itself.
"""

from __future__ import annotations

from vpnlab.kinds.base import ContainerSpec
from vpnlab.kinds.router import router_spec
from vpnlab.topology.model import Lab, Node


class StrongswanKind:
    name = "strongswan"

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec:
        if node.implementation != "strongswan":
            raise ValueError(f"node {node.name} is not a strongswan node")
        return router_spec(lab, node)
