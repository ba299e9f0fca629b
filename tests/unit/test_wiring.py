"""Fabric naming: every interface gets a port on its segment's bridge, all names fit Linux's 15."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from vpnlab.net.wiring import plan_fabric
from vpnlab.topology.model import Interface, Lab, Node, Segment


def _lab(branches: int) -> Lab:
    segments = [Segment("inet", "underlay", IPv4Network("198.51.100.0/24"))]
    nodes = []
    for i in range(branches + 1):
        router = "hub" if i == 0 else f"branch-number{i:02d}"  # 15 chars: the longest node name
        lan = f"lan-{router}"
        segments.append(Segment(lan, "lan", IPv4Network(f"10.{i}.0.0/24")))
        nodes.append(
            Node(
                router,
                "hub" if i == 0 else "branch",
                "agent",
                (
                    Interface("wan0", "inet", IPv4Interface(f"198.51.100.{10 + i}/24")),
                    Interface("lan0", lan, IPv4Interface(f"10.{i}.0.1/24")),
                ),
            )
        )
        nodes.append(
            Node(
                f"h{i}",
                "host",
                "host",
                (Interface("eth0", lan, IPv4Interface(f"10.{i}.0.10/24")),),
                router=router,
                gateway=IPv4Address(f"10.{i}.0.1"),
            )
        )
    return Lab("t", Path("t.yml"), IPv4Network("198.51.100.0/24"), tuple(segments), tuple(nodes))


def test_one_bridge_per_segment_and_one_port_per_interface() -> None:
    lab = _lab(20)
    plan = plan_fabric(lab)
    assert [b.segment for b in plan.bridges] == [s.name for s in lab.segments]
    assert plan.bridges[0].name == "inet"
    assert len({b.name for b in plan.bridges}) == len(plan.bridges)
    assert len(plan.ports) == sum(len(n.interfaces) for n in lab.nodes)
    assert len({p.port for p in plan.ports}) == len(plan.ports)
    for name in [b.name for b in plan.bridges] + [p.port for p in plan.ports]:
        assert 0 < len(name) <= 15


def test_ports_land_on_their_segments_bridge_with_a_readable_alias() -> None:
    plan = plan_fabric(_lab(2))
    bridge_of = {b.segment: b.name for b in plan.bridges}
    hub = plan.ports_of("hub")
    assert [(p.ifname, p.bridge) for p in hub] == [("wan0", "inet"), ("lan0", bridge_of["lan-hub"])]
    assert hub[0].alias == "hub:wan0"
    (host,) = plan.ports_of("h0")
    assert host.bridge == bridge_of["lan-hub"] and host.ifname == "eth0"


def test_an_interface_on_an_unknown_segment_is_an_error() -> None:
    lab = _lab(1)
    broken = Node("x", "hub", "agent", (Interface("wan0", "nowhere", IPv4Interface("198.51.100.99/24")),))
    with pytest.raises(ValueError, match="unknown segment 'nowhere'"):
        plan_fabric(Lab(lab.name, lab.source, lab.underlay, lab.segments, (*lab.nodes, broken)))
