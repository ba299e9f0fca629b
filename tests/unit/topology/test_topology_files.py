"""Every shipped topology in topologies/ loads and plans as documented."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from vpnlab.topology import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"
FILES = sorted(TOPOLOGIES.glob("*.yml"))


def test_the_expected_files_exist() -> None:
    names = {p.name for p in FILES}
    assert {"hub-spoke.yml", "minimal.yml", "strongswan-branch.yml", "strongswan-hub.yml", "bench-20.yml", "mesh.yml",
            "nat.yml"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_loads(path: Path) -> None:
    lab = load_topology(path)
    assert lab.routers
    # every router LAN has exactly one segment, every host sits on one of its router's segments
    for host in lab.hosts:
        router = lab.node(host.router)
        assert host.interfaces[0].segment in {i.segment for i in router.interfaces}


def test_hub_spoke() -> None:
    lab = load_topology(TOPOLOGIES / "hub-spoke.yml")
    assert [n.name for n in lab.routers] == ["hub", "br1", "br2", "br3"]
    assert len(lab.hosts) == 4


def test_minimal() -> None:
    lab = load_topology(TOPOLOGIES / "minimal.yml")
    assert [(n.role, len(n.hubs)) for n in lab.routers] == [("hub", 0), ("branch", 1), ("branch", 1)]
    assert len(lab.hosts) == 3


def test_strongswan_files() -> None:
    branch = load_topology(TOPOLOGIES / "strongswan-branch.yml")
    assert (branch.node("hub").implementation, branch.node("br1").implementation) == ("agent", "strongswan")
    hub = load_topology(TOPOLOGIES / "strongswan-hub.yml")
    assert (hub.node("hub").implementation, hub.node("br1").implementation) == ("strongswan", "agent")
    assert len(branch.hosts) == 2 and len(hub.hosts) == 3  # a strongSwan hub with two of our branches


def test_bench_20() -> None:
    lab = load_topology(TOPOLOGIES / "bench-20.yml")
    assert len(lab.routers) == 21 and len(lab.hosts) == 20
    assert len(lab.name) <= 8
    assert str(lab.node("br20").public_address) == "198.51.100.30"


def test_mesh_lab_is_supported() -> None:
    lab = load_topology(TOPOLOGIES / "mesh.yml")
    assert sum(n.mesh.enabled for n in lab.routers) == 4  # the hub turns it off
    assert lab.node("br3").mesh.idle_timeout_s == 60
    assert lab.node("br4").behind_nat and lab.node("br4").public_address is None


def test_nat_file_has_each_nat_type_a_shared_device_and_a_public_branch() -> None:
    lab = load_topology(TOPOLOGIES / "nat.yml")
    devices = {n.name: n.nat for n in lab.nodes if n.role == "nat"}
    assert {d: (s.type, s.branches) for d, s in devices.items() if s is not None} == {
        "home-nat": ("endpoint-independent", ("home",)),
        "shop-nat": ("symmetric", ("shop",)),
        "carrier": ("endpoint-independent", ("kiosk1", "kiosk2")),
    }
    behind = {b for s in devices.values() if s is not None for b in s.branches}
    assert [n.name for n in lab.routers if n.role == "branch" and n.name not in behind] == ["office"]
    assert all(lab.node(b).interfaces[0].address.ip in IPv4Network("100.64.0.0/10") for b in behind)


def test_mesh_nat() -> None:
    lab = load_topology(TOPOLOGIES / "mesh-nat.yml")
    branches = {n.name: n for n in lab.routers if n.role == "branch"}
    assert all(b.mesh.enabled and b.mesh.hole_punching for b in branches.values())
    types = {b: lab.node(n.nat_device).nat.type if n.nat_device else None for b, n in branches.items()}
    assert types == {"br1": "endpoint-independent", "br2": "endpoint-independent", "br3": "symmetric", "br4": None}
    assert lab.node("br1").nat_device != lab.node("br2").nat_device  # two devices: no hairpinning needed
