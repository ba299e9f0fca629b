"""The "libreswan" kind: libreswan 4.10's pluto under the router agent, in an image of its own.

libreswan's package conflicts with strongSwan's, so the node runs vpnlab-libreswan:<hash>
(image_libreswan.py), built only when a lab has such a node. The agent there configures interfaces
and routes from node.json as everywhere; vpnlab_libreswan runs pluto with the ipsec.conf and
ipsec.secrets rendered here (libreswan_conf.py).
"""

from __future__ import annotations

from vpnlab_agent.config import CONFIG_PATH

from vpnlab.errors import LabError
from vpnlab.kinds.base import ContainerSpec
from vpnlab.kinds.libreswan_conf import render
from vpnlab.kinds.router import ROUTER_SYSCTLS
from vpnlab.nodeconfig import build_node_config
from vpnlab.topology.model import Lab, Node

LIBRESWAN_COMMAND = ("python3", "-m", "vpnlab_libreswan", "run")


class LibreswanKind:
    name = "libreswan"

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec:
        from vpnlab.image_libreswan import libreswan_tag

        if node.implementation != "libreswan" or node.libreswan is None:
            raise ValueError(f"node {node.name} is not a libreswan node")
        config = build_node_config(lab, node)
        try:
            files = render(lab, node, config)
        except ValueError as exc:  # a proposal pluto cannot express: the topology's crypto
            raise LabError(f"{lab.source}: nodes.{node.name}.crypto: {exc}") from None
        return ContainerSpec(
            node=node.name,
            command=LIBRESWAN_COMMAND,
            # the node config last: the agent starts once it is there, and pluto then reads the others
            files={**{p: t.encode() for p, t in files.items()}, CONFIG_PATH: config.to_json().encode()},
            sysctls=dict(ROUTER_SYSCTLS),
            image=libreswan_tag(),
            has_agent=True,
        )
