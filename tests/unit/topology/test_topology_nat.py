"""NAT devices in the plan: implicit per-branch devices, shared (CGN) ones, and their errors."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from vpnlab.errors import TopologyError
from vpnlab.topology import load_topology

BASE = """\
name: t
secret: {psk: k}
nodes:
  hub: {role: hub}
"""


def lab_of(tmp_path: Path, nodes: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "t.yml"
    p.write_text(BASE + textwrap.indent(textwrap.dedent(nodes), "  "))
    return load_topology(p)


def error_of(tmp_path: Path, nodes: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        lab_of(tmp_path, nodes)
    assert "\n" not in str(info.value)
    return info.value


def test_nat_true_gets_its_own_endpoint_independent_device_with_the_public_address(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, "br1: {role: branch, nat: true}\nbr2: {role: branch}\n")
    dev, br1, br2 = lab.node("br1-nat"), lab.node("br1"), lab.node("br2")
    assert dev.role == "nat" and dev.nat is not None and dev.nat.type == "endpoint-independent"
    # the device takes the address the branch would have had; later nodes keep theirs
    assert dev.public_address == IPv4Address("198.51.100.11") and br2.public_address == IPv4Address("198.51.100.12")
    assert br1.public_address is None and br1.behind_nat and br1.nat_device == "br1-nat"
    assert br1.interfaces[0] .address == IPv4Interface("100.64.0.10/24")
    assert br1.interfaces[0].segment == "nat-br1-nat" and br1.gateway == IPv4Address("100.64.0.1")
    assert [i.address for i in dev.interfaces] == [IPv4Interface("198.51.100.11/24"), IPv4Interface("100.64.0.1/24")]
    assert dev.nat.mapping_timeout_s == 60 and dev.nat.branches == ("br1",)
    assert not dev.is_router and dev not in lab.routers and lab.nat_devices == (dev,)


def test_a_type_name_gives_an_own_device_of_that_type(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, "br1: {role: branch, nat: symmetric}\n")
    assert lab.node("br1-nat").nat.type == "symmetric"  # type: ignore[union-attr]


def test_several_branches_share_a_declared_device(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, """\
        cgn: {role: nat, type: symmetric, mapping_timeout: 5, public: 198.51.100.99}
        br1: {role: branch, nat: cgn}
        br2: {role: branch, nat: cgn}
        br3: {role: branch, nat: true}
    """)
    cgn = lab.node("cgn")
    assert cgn.nat is not None and cgn.nat.branches == ("br1", "br2") and cgn.nat.mapping_timeout_s == 5
    assert cgn.public_address == IPv4Address("198.51.100.99")
    assert [lab.node(b).interfaces[0].address.ip for b in ("br1", "br2")] == [IPv4Address("100.64.0.10"), IPv4Address("100.64.0.11")]
    # each device has its own inside /24, and it is one segment of the lab
    assert lab.node("br3-nat").nat.inside == IPv4Network("100.64.1.0/24")  # type: ignore[union-attr]
    assert {s.name for s in lab.segments if s.kind == "nat"} == {"nat-cgn", "nat-br3-nat"}


def test_inside_subnets_stay_clear_of_the_labs_lans(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, "br1: {role: branch, nat: true, lan: 100.64.0.0/23}\n")
    assert lab.node("br1-nat").nat.inside == IPv4Network("100.64.2.0/24")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("nodes", "where", "problem"),
    [
        ("br1: {role: branch, nat: cgn}\n", "nodes.br1.nat",
         "unknown NAT device 'cgn' (NAT devices in this lab: none; or true, endpoint-independent, symmetric)"),
        ("br1: {role: branch, nat: hub}\n", "nodes.br1.nat",
         "unknown NAT device 'hub' (NAT devices in this lab: none; or true, endpoint-independent, symmetric)"),
        ("verylongbranch1: {role: branch, nat: true}\n", "nodes.verylongbranch1.nat",
         "its own NAT device would be named 'verylongbranch1-nat', which is too long: declare a node with role: nat and give its name here"),
        ("br1: {role: branch, nat: true}\nbr1-nat: {role: host, router: hub}\n", "nodes.br1.nat",
         "its own NAT device would be named 'br1-nat', which is already taken: declare a node with role: nat and give its name here"),
        ("br1: {role: branch, nat: true, public: 198.51.100.50}\n", "nodes.br1",
         "a branch with nat: true has no public address (its NAT device has one); drop 'public'"),
        ("symmetric: {role: nat}\n", "nodes.symmetric",
         "a NAT device may not be named like a NAT type (endpoint-independent, symmetric)"),
        ("cgn: {role: nat}\npc: {role: host, router: cgn}\n", "nodes.pc.router",
         "'cgn' is a NAT device, not a router (routers in this lab: hub)"),
        ("cgn: {role: nat, type: full-cone}\n", "nodes.cgn.type",
         "'full-cone' is not valid (expected 'endpoint-independent' or 'symmetric')"),
        ("cgn: {role: nat, mapping_timeout: 0}\n", "nodes.cgn.mapping_timeout", "input should be greater than 0, got 0"),
        ("cgn: {role: nat, hosts: 1}\n", "nodes.cgn",
         "key 'hosts' is not allowed for role nat (a nat takes: mapping_timeout, public, role, type)"),
        ("br1: {role: branch, nat: 'yes'}\n", "nodes.br1.nat",
         "unknown NAT device 'yes' (NAT devices in this lab: none; or true, endpoint-independent, symmetric)"),
    ],
)
def test_nat_mistakes_are_one_line(tmp_path: Path, nodes: str, where: str, problem: str) -> None:
    err = error_of(tmp_path, nodes)
    assert (err.where, err.problem) == (where, problem)


def test_nat_false_is_a_plain_branch(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, "br1: {role: branch, nat: false}\n")
    assert lab.nat_devices == () and lab.node("br1").public_address == IPv4Address("198.51.100.11")
