"""Node lifecycle: `vpnlab stop|start|restart LAB NODE`, and finding nodes that lost their wiring.

The fabric namespace holds the bridges; a container's interfaces are veth pairs whose container
end dies with the container's namespace. So a node that stops loses its interfaces, and one that
runs again (by vpnlab, or by `docker restart` outside it) needs new veths on the same bridges.
How to wire each node is recorded on its container (net/portrecords.py, written at deploy), so
this works from the runtime alone, like destroy. Routers configure their addresses themselves
from /etc/vpnlab/node.json, which lives in the container's filesystem and survives the restart;
hosts get their address and default route from here, as at deploy.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Interface

from pyroute2.netlink.exceptions import NetlinkError

from vpnlab.errors import LabError, one_line
from vpnlab.lab import agent_status
from vpnlab.net.fabric import Fabric, configure_interface, fabric_netns_name
from vpnlab.net.namespace import netns_exists
from vpnlab.net.portrecords import LABEL_PORTS, PortRecord, missing_interfaces, port_records
from vpnlab.net.wiring import interface_mac
from vpnlab.runtime.base import ContainerInfo, Runtime, container_name
from vpnlab.topology.schema import NODE_NAME_RE

STOP_TIMEOUT_S = 5  # the agent sends its DELETEs on SIGTERM; Docker kills after this
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.2


# --- verbs ------------------------------------------------------------------------------------------


def node_container(rt: Runtime, lab: str, node: str) -> ContainerInfo:
    info = rt.get(container_name(lab, node)) if NODE_NAME_RE.match(node) else None
    if info is None or info.lab != lab or info.node != node:
        nodes = sorted(c.node for c in rt.containers(lab))
        if not nodes:
            raise LabError(f"no lab {lab} is running")
        raise LabError(f"lab {lab} has no node {node!r} (nodes: {', '.join(nodes)})")
    if not netns_exists(fabric_netns_name(lab)):
        raise LabError(f"lab {lab} has no fabric netns {fabric_netns_name(lab)}: destroy and deploy it again")
    return info


def stop_node(lab: str, node: str, runtime: Runtime) -> ContainerInfo:
    """Stop a node's container (its interfaces go with its namespace). A stopped node is a no-op."""
    info = node_container(runtime, lab, node)
    if info.state == "running":
        runtime.stop(info.name, STOP_TIMEOUT_S)
    return runtime.get(info.name) or info


def start_node(lab: str, node: str, runtime: Runtime, *, wait: bool = True) -> float:
    """Start a stopped node, wire it as deploy did and (routers) wait until its agent is ready.
    A node that runs with all its interfaces is left alone. Returns the seconds it took."""
    started = time.monotonic()
    info = node_container(runtime, lab, node)
    records = port_records(runtime.labels(info.name))
    if not records:
        raise LabError(f"node {node} was deployed by an older vpnlab (no {LABEL_PORTS} label): redeploy the lab")
    if info.state == "running":
        if not missing_interfaces(info, records):
            return 0.0
        runtime.stop(info.name, STOP_TIMEOUT_S)  # an agent that gave up waiting for links must start over
    info = runtime.start_existing(info.name)
    wire_node(lab, info, records)
    if wait and info.kind != "host":
        wait_agent_ready(info, runtime)
    return time.monotonic() - started


def restart_node(lab: str, node: str, runtime: Runtime, *, wait: bool = True) -> float:
    """Stop (if running) and start again, wired; the seconds from the start until ready."""
    stop_node(lab, node, runtime)
    return start_node(lab, node, runtime, wait=wait)


def wire_node(lab: str, info: ContainerInfo, records: list[PortRecord]) -> None:
    """New veths from the node's bridges into its (new) namespace; a leftover port of the old
    namespace (the kernel removes it with that namespace, not always before we get here) goes first."""
    try:
        with Fabric.open(fabric_netns_name(lab)) as fabric:
            for r in records:
                fabric.remove_link(r.port)
                fabric.attach(r.bridge, r.port, r.alias, info.netns_path, r.ifname, interface_mac(lab, r.alias))
        for r in records:
            if r.address is not None:
                configure_interface(
                    info.netns_path, r.ifname, IPv4Interface(r.address), IPv4Address(r.gateway) if r.gateway else None
                )
    except (NetlinkError, OSError, LookupError, ValueError) as exc:
        raise LabError(f"cannot wire node {info.node}: {one_line(exc)}") from exc


def wait_agent_ready(info: ContainerInfo, runtime: Runtime, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    note = "no status"
    while time.monotonic() < deadline:
        current = runtime.get(info.name)
        if current is None or current.state != "running":
            raise LabError(f"node {info.node} stopped while starting: {runtime.logs(info.name, 5)!r}")
        try:
            status = agent_status(current, timeout=2.0)
        except Exception as exc:  # not listening yet
            note = one_line(exc)
        else:
            if status.get("ready"):
                return
            note = "; ".join(map(str, status.get("errors") or [])) or "not ready yet"
        time.sleep(READY_POLL_S)
    raise LabError(f"node {info.node} not ready {timeout:g} s after its start ({note})")
