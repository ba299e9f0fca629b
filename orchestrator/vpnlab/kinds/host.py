"""The "host" kind: an end host in a LAN. No agent; the runtime configures eth0 from outside."""

from __future__ import annotations

from vpnlab.kinds.base import ContainerSpec
from vpnlab.topology.model import Lab, Node

HOST_COMMAND = ("sleep", "infinity")


class HostKind:
    name = "host"

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec:
        # NET_ADMIN stays so the runtime can set eth0's address and default route in the
        # container's namespace; no TUN device, hosts run no VPN.
        return ContainerSpec(node=node.name, command=HOST_COMMAND, devices=(), has_agent=False)
