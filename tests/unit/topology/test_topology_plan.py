"""Address planning: deterministic, file order, explicit values honoured."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from vpnlab.topology import load_topology
from vpnlab.topology.model import Context, MeshSettings


def load(tmp_path: Path, text: str):
    p = tmp_path / "t.yml"
    p.write_text(textwrap.dedent(text))
    return load_topology(p)


MIXED = """\
name: mixed
internet: 203.0.113.0/24
secret: {psk: k}
nodes:
  br1:
    role: branch
    hubs: [hub]
    hosts: 2
  hub:
    role: hub
    public: 203.0.113.11
    lan: [10.1.0.0/24, 172.16.5.0/24]
    hosts: [web, db]
  br2:
    role: branch
    hubs: [hub]
    lan: 10.0.0.0/16
    hosts: 1
  br3:
    role: branch
    hubs: [hub]
  pc:
    role: host
    router: hub
    address: 172.16.5.20
  pc2:
    role: host
    router: br1
  pc3:
    role: host
    router: br3
    address: 10.3.0.10
"""


def test_public_addresses_from_dot10_skipping_explicit(tmp_path: Path) -> None:
    lab = load(tmp_path, MIXED)
    pub = {n.name: str(n.public_address) for n in lab.routers}
    assert pub == {"br1": "203.0.113.10", "hub": "203.0.113.11", "br2": "203.0.113.12", "br3": "203.0.113.13"}
    assert lab.node("br2").interfaces[0] .address == IPv4Interface("203.0.113.12/24")


def test_auto_lans_avoid_explicit_ones(tmp_path: Path) -> None:
    lab = load(tmp_path, MIXED)
    # 10.0.0.0/16 (br2) and 10.1.0.0/24 (hub) are taken, so br1 gets 10.2, br3 10.3
    assert lab.node("br1").lan_subnets == (IPv4Network("10.2.0.0/24"),)
    assert lab.node("br3").lan_subnets == (IPv4Network("10.3.0.0/24"),)
    assert lab.node("hub").lan_subnets == (IPv4Network("10.1.0.0/24"), IPv4Network("172.16.5.0/24"))


def test_interfaces_and_segments(tmp_path: Path) -> None:
    lab = load(tmp_path, MIXED)
    hub = lab.node("hub")
    assert [(i.name, i.segment, str(i.address)) for i in hub.interfaces] == [
        ("wan0", "inet", "203.0.113.11/24"),
        ("lan0", "lan-hub", "10.1.0.1/24"),
        ("lan1", "lan-hub-1", "172.16.5.1/24"),
    ]
    assert [(s.name, s.kind, str(s.subnet)) for s in lab.segments] == [
        ("inet", "underlay", "203.0.113.0/24"),
        ("lan-br1", "lan", "10.2.0.0/24"),
        ("lan-hub", "lan", "10.1.0.0/24"),
        ("lan-hub-1", "lan", "172.16.5.0/24"),
        ("lan-br2", "lan", "10.0.0.0/16"),
        ("lan-br3", "lan", "10.3.0.0/24"),
    ]


def test_hosts_numbered_from_dot10_and_explicit_honoured(tmp_path: Path) -> None:
    lab = load(tmp_path, MIXED)
    addr = {n.name: (n.interfaces[0].segment, str(n.interfaces[0].address), str(n.gateway)) for n in lab.hosts}
    assert addr == {
        "br1-h1": ("lan-br1", "10.2.0.10/24", "10.2.0.1"),
        "br1-h2": ("lan-br1", "10.2.0.11/24", "10.2.0.1"),
        "web": ("lan-hub", "10.1.0.10/24", "10.1.0.1"),
        "db": ("lan-hub", "10.1.0.11/24", "10.1.0.1"),
        "br2-h1": ("lan-br2", "10.0.0.10/16", "10.0.0.1"),
        "pc": ("lan-hub-1", "172.16.5.20/24", "172.16.5.1"),
        "pc2": ("lan-br1", "10.2.0.12/24", "10.2.0.1"),
        # explicit .10 pushes nothing: br3 has no planned hosts
        "pc3": ("lan-br3", "10.3.0.10/24", "10.3.0.1"),
    }
    assert all(h.interfaces[0].name == "eth0" and h.router for h in lab.hosts)


def test_explicit_host_address_is_skipped_by_planned_hosts(tmp_path: Path) -> None:
    lab = load(
        tmp_path,
        """\
        name: t
        secret: {psk: k}
        nodes:
          hub: {role: hub, hosts: 2}
          pc: {role: host, router: hub, address: 10.0.0.10}
        """,
    )
    assert [str(n.interfaces[0].address) for n in lab.hosts] == ["10.0.0.11/24", "10.0.0.12/24", "10.0.0.10/24"]


def test_node_order(tmp_path: Path) -> None:
    lab = load(tmp_path, MIXED)
    assert [n.name for n in lab.nodes] == [
        "br1", "br1-h1", "br1-h2", "hub", "web", "db", "br2", "br2-h1", "br3", "pc", "pc2", "pc3"
    ]


def test_deterministic(tmp_path: Path) -> None:
    assert load(tmp_path, MIXED) == load(tmp_path, MIXED)


def test_default_hub_and_defaults_inherited(tmp_path: Path) -> None:
    lab = load(
        tmp_path,
        """\
        name: t
        secret: {psk: k}
        defaults: {dataplane: userspace, mesh: {enabled: true, max_tunnels: 4}}
        nodes:
          hub: {role: hub, dataplane: xfrm, mesh: {enabled: false}}
          br1: {role: branch, mesh: {idle_timeout: 30}}
        """,
    )
    hub, br1 = lab.node("hub"), lab.node("br1")
    assert br1.hubs == ("hub",) and hub.hubs == ()
    assert (hub.dataplane, br1.dataplane) == ("xfrm", "userspace")
    assert hub.mesh == MeshSettings(enabled=False, idle_timeout_s=300, max_tunnels=4)
    assert br1.mesh == MeshSettings(enabled=True, idle_timeout_s=30, max_tunnels=4)
    assert lab.underlay == IPv4Network("198.51.100.0/24")
    assert lab.psk == "k" and {n.psk for n in lab.routers} == {None}


def test_gateway_can_be_a_hub(tmp_path: Path) -> None:
    lab = load(tmp_path, "name: t\nsecret: {psk: k}\nnodes:\n  gw: {role: gateway}\n  br1: {role: branch}\n")
    assert lab.node("br1").hubs == ("gw",)


def test_gateways_clusters_nat_and_contexts_plan_together(tmp_path: Path) -> None:
    lab = load(
        tmp_path,
        """\
        name: t
        secret: {psk: k}
        nodes:
          gw1: {role: gateway, contexts: [{name: red}]}
          gw2: {role: gateway, contexts: [{name: red}]}
          br1: {role: branch, hubs: [lb], nat: true}
          hub: {role: hub, contexts: [{name: red}]}
          br2: {role: branch, hubs: [hub], contexts: [{name: red, lan: 10.50.0.0/24}]}
        clusters:
          lb: {members: [gw1, gw2]}
        """,
    )
    br1, br2 = lab.node("br1"), lab.node("br2")
    assert br1.behind_nat and br1.public_address is None
    assert br2.contexts == (Context("red", (IPv4Network("10.50.0.0/24"),), 1, 101, ("c-red0",)),)
    assert lab.clusters[0].virtual_address == IPv4Address("203.0.113.2")
    assert lab.node("gw1").cluster == "lb"


def test_mesh_alone_plans(tmp_path: Path) -> None:
    lab = load(tmp_path, "name: t\nsecret: {psk: k}\ndefaults: {mesh: {enabled: true}}\nnodes:\n  hub: {role: hub}\n")
    assert lab.node("hub").mesh.enabled
