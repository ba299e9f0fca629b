"""How deploy wired each container, recorded on the container itself (label `vpnlab.ports`), so
that lifecycle verbs and inspect can wire it again or see that it lost its interfaces, from the
runtime alone (like destroy)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from vpnlab.errors import LabError
from vpnlab.net.fabric import interface_addresses
from vpnlab.net.wiring import FabricPlan
from vpnlab.runtime.base import ContainerInfo
from vpnlab.topology.model import Lab

LABEL_PORTS = "vpnlab.ports"


@dataclass(frozen=True)
class PortRecord:
    """One container interface as deploy wired it."""

    ifname: str
    bridge: str
    port: str  # fabric-side veth
    alias: str
    address: str | None  # hosts only: configured from outside
    gateway: str | None

    def to_list(self) -> list[str | None]:
        return [self.ifname, self.bridge, self.port, self.alias, self.address, self.gateway]


def ports_label(lab: Lab, plan: FabricPlan, node_name: str, configure_from_outside: bool) -> str:
    """The `vpnlab.ports` label of one node: how to wire it again."""
    node = lab.node(node_name)
    by_if = {i.name: i for i in node.interfaces}
    records = []
    for p in plan.ports_of(node_name):
        iface = by_if[p.ifname]
        records.append(
            PortRecord(
                p.ifname, p.bridge, p.port, p.alias,
                str(iface.address) if configure_from_outside else None,
                str(node.gateway) if configure_from_outside and node.gateway else None,
            ).to_list()
        )
    return json.dumps(records, separators=(",", ":"))


def port_records(labels: dict[str, str]) -> list[PortRecord]:
    raw = labels.get(LABEL_PORTS)
    if not raw:
        return []
    try:
        return [PortRecord(*item) for item in json.loads(raw)]
    except (ValueError, TypeError) as exc:
        raise LabError(f"label {LABEL_PORTS} is unreadable ({exc}): redeploy the lab") from None


def missing_interfaces(info: ContainerInfo, records: list[PortRecord]) -> list[str]:
    """Interfaces a running container should have but does not (restarted outside vpnlab)."""
    if info.state != "running" or not info.pid or not records:
        return []
    try:
        present = interface_addresses(info.netns_path)
    except (OSError, NetlinkError):
        return []
    return [r.ifname for r in records if r.ifname not in present]


def heal_hint(lab: str, node: str) -> str:
    return f"its interfaces are gone (restarted outside vpnlab?): heal it with `vpnlab restart {lab} {node}`"
