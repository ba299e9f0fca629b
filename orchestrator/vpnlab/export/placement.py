"""Which machine runs which node when a lab is exported for several hosts.

A placement is a set of hosts (name and the address their VXLAN tunnels use) and a map from every
node of the lab to one host. Nodes the user did not place are split automatically: each router
goes, with the end hosts of its LANs, to the host with the fewest containers so far (ties: the
first host), so a LAN stays on one machine and only the underlay crosses hosts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vpnlab.errors import TopologyError
from vpnlab.topology.model import Lab

HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # also a directory name in the export
DEFAULT_HOST_MTU = 1500  # the MTU of the network between the hosts


@dataclass(frozen=True)
class Host:
    name: str
    address: IPv4Address | IPv6Address  # where the other hosts' VXLAN tunnels end


@dataclass(frozen=True)
class Placement:
    hosts: tuple[Host, ...]
    node_host: dict[str, str]  # every node of the lab -> Host.name
    host_mtu: int = DEFAULT_HOST_MTU

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def nodes_on(self, host: str) -> tuple[str, ...]:
        return tuple(n for n, h in self.node_host.items() if h == host)


class _PlacementSpec(BaseModel):
    """The placement file (docs/containerlab.md)."""

    model_config = ConfigDict(extra="forbid")
    hosts: Annotated[dict[str, str], Field(min_length=1)]
    nodes: dict[str, str] = {}
    mtu: Annotated[int, Field(ge=1280, le=65535)] = DEFAULT_HOST_MTU


def parse_hosts(values: list[str], where: str = "--host") -> tuple[Host, ...]:
    """`NAME=ADDRESS` strings (the CLI's --host) -> hosts."""
    pairs = []
    for value in values:
        name, sep, address = value.partition("=")
        if not sep:
            raise TopologyError(where, value, "expected NAME=ADDRESS, e.g. host1=192.0.2.11")
        pairs.append((name.strip(), address.strip()))
    return _hosts(pairs, where)


def load_placement(path: Path, lab: Lab) -> Placement:
    """Read a placement file and place every node of `lab` (the unplaced ones automatically)."""
    from vpnlab.topology.loader import read_yaml

    file = str(path)
    data = read_yaml(path)
    try:
        spec = _PlacementSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TopologyError(file, where, first["msg"]) from None
    hosts = _hosts([(n, a) for n, a in spec.hosts.items()], file, "hosts.")
    return place(lab, hosts, pins=spec.nodes, host_mtu=spec.mtu, where=file)


def place(
    lab: Lab,
    hosts: tuple[Host, ...],
    *,
    pins: dict[str, str] | None = None,
    host_mtu: int = DEFAULT_HOST_MTU,
    where: str = "--host",
) -> Placement:
    """Every node of `lab` on one of `hosts`: `pins` (node -> host) first, then the automatic split."""
    pins = pins or {}
    names = [h.name for h in hosts]
    for node, host in pins.items():
        if node not in {n.name for n in lab.nodes}:
            raise TopologyError(where, f"nodes.{node}", f"no node {node} in lab {lab.name}")
        if host not in names:
            raise TopologyError(where, f"nodes.{node}", f"unknown host {host!r} (hosts: {', '.join(names)})")
    node_host = dict(pins)
    load = {h: sum(1 for p in pins.values() if p == h) for h in names}
    for router in lab.routers:
        target = node_host.get(router.name)
        if target is None:
            target = min(names, key=lambda h: (load[h], names.index(h)))
            node_host[router.name] = target
            load[target] += 1
        for host in lab.hosts:  # its end hosts follow it unless pinned
            if host.router == router.name and host.name not in node_host:
                node_host[host.name] = target
                load[target] += 1
    return Placement(hosts=hosts, node_host={n.name: node_host[n.name] for n in lab.nodes}, host_mtu=host_mtu)


def _hosts(pairs: list[tuple[str, str]], file: str, prefix: str = "") -> tuple[Host, ...]:
    hosts: list[Host] = []
    for name, address in pairs:
        if not HOST_NAME_RE.match(name):
            raise TopologyError(file, f"{prefix}{name}", "a host name is letters, digits, '.', '_' or '-' (at most 63)")
        try:
            addr = ip_address(address)
        except ValueError:
            raise TopologyError(file, f"{prefix}{name}", f"{address!r} is not an IP address") from None
        if any(h.name == name for h in hosts):
            raise TopologyError(file, f"{prefix}{name}", "host given twice")
        if any(h.address == addr for h in hosts):
            raise TopologyError(file, f"{prefix}{name}", f"address {addr} is already host {_by(hosts, addr)}'s")
        hosts.append(Host(name, addr))
    if not hosts:
        raise TopologyError(file, "hosts", "no hosts given")
    for h in hosts:  # a VXLAN tunnel joins two addresses of one family
        if h.address.version != hosts[0].address.version:
            raise TopologyError(
                file, f"{prefix}{h.name}", f"every host needs an IPv{hosts[0].address.version} address, like {hosts[0].name}"
            )
    return tuple(hosts)


def _by(hosts: list[Host], addr: Any) -> str:
    return next(h.name for h in hosts if h.address == addr)
