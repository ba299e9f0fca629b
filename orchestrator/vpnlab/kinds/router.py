"""The "agent" kind: a router container running the vpnlab router agent."""

from __future__ import annotations

from vpnlab_agent.config import CONFIG_PATH

from vpnlab.kinds.base import NO_IPV6_SYSCTLS, ContainerSpec
from vpnlab.nodeconfig import build_node_config
from vpnlab.topology.model import Lab, Node

AGENT_COMMAND = ("python3", "-m", "vpnlab_agent", "run")
# Routers forward between wan0 and their LANs; rp_filter would drop packets that arrive from a
# tunnel device with a source the kernel would route elsewhere. A hub forwards branch-to-branch
# traffic back out of the tunnel device it came in on, which the kernel takes for a shared medium
# and answers with ICMP redirects into the tunnel ("Redirect Host" at the sender); a redirect is
# meaningless across a tunnel, so routers neither send nor accept them ("default" covers the
# tunnel devices the agent creates later).
ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    **NO_IPV6_SYSCTLS,
}

# A cluster member binds IKE on the virtual address before keepalived gives it the address, and
# lets keepalived raise its own priority (SYS_NICE): sub-second adverts from a starved process
# would make the backups take over from a master that is alive.
CLUSTER_MEMBER_SYSCTLS = {"net.ipv4.ip_nonlocal_bind": "1"}
CLUSTER_MEMBER_CAPS = ("SYS_NICE",)


def router_spec(lab: Lab, node: Node) -> ContainerSpec:
    config = build_node_config(lab, node)
    member = node.cluster is not None and node.role == "gateway"
    return ContainerSpec(
        node=node.name,
        command=AGENT_COMMAND,
        files={CONFIG_PATH: config.to_json().encode()},
        # contexts: the kernel's ICMP errors carry the mark of the packet they answer, so they are
        # routed in that packet's context (vpnlab_agent/contexts/routing.py)
        sysctls={**ROUTER_SYSCTLS, **({"net.ipv4.fwmark_reflect": "1"} if node.contexts else {}),
                 **(CLUSTER_MEMBER_SYSCTLS if member else {})},
        cap_add=ContainerSpec.cap_add + (CLUSTER_MEMBER_CAPS if member else ()),
        has_agent=True,
    )


class AgentRouterKind:
    name = "agent"

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec:
        return router_spec(lab, node)
