"""The "host" kind: an end host in a LAN. No agent; the runtime configures eth0 from outside."""

from __future__ import annotations

from vpnlab.kinds.base import NO_IPV6_SYSCTLS, ContainerSpec
from vpnlab.topology.model import Lab, Node

HOST_COMMAND = ("sleep", "infinity")


class HostKind:
    name = "host"

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec:
        # The runtime configures eth0 from the host (its own privileges, through setns); the
        # default NET_ADMIN/NET_RAW stay for the user's `vpnlab exec` (ip route, ping, tcpdump).
        # No TUN device: hosts run no VPN.
        return ContainerSpec(node=node.name, command=HOST_COMMAND, devices=(), has_agent=False,
                             sysctls=dict(NO_IPV6_SYSCTLS))
