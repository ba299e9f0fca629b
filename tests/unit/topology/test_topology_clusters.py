"""Gateway clusters: planning (segment, upstream router, VIP, member addresses), node configs, errors."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from vpnlab.errors import TopologyError
from vpnlab.nodeconfig import build_node_config
from vpnlab.topology import load_topology

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"
BASE = """\
name: t
secret: {psk: k}
nodes:
  gw1: {role: gateway, lan: 10.0.1.0/24}
  gw2: {role: gateway, lan: 10.0.2.0/24}
  br1: {role: branch, hubs: [lb], lan: 10.1.0.0/24}
  br2: {role: branch, lan: 10.2.0.0/24}
clusters:
  lb:
    members: [gw1, gw2]
"""


def load(tmp_path: Path, text: str):
    p = tmp_path / "t.yml"
    p.write_text(textwrap.dedent(text))
    return load_topology(p)


def error(tmp_path: Path, text: str) -> tuple[str, str]:
    with pytest.raises(TopologyError) as e:
        load(tmp_path, text)
    return e.value.where, e.value.problem


def test_planned_cluster(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE)
    (c,) = lab.clusters
    assert c.segment == IPv4Network("203.0.113.0/24") and c.virtual_address == IPv4Address("203.0.113.2")
    assert c.upstream == "lb-up" and c.upstream_address == IPv4Address("203.0.113.1")
    assert c.member_addresses == {"gw1": IPv4Address("203.0.113.10"), "gw2": IPv4Address("203.0.113.11")}
    assert c.priorities == {"gw1": 200, "gw2": 190} and c.redirect == "init" and c.metric == "tunnels"
    gw1 = lab.node("gw1")
    assert [i.name for i in gw1.interfaces] == ["lan0", "cl0"]  # no wan0: behind the upstream router
    assert gw1.public_address == IPv4Address("203.0.113.10") and gw1.cluster == "lb"
    up = lab.node("lb-up")
    assert up.role == "upstream" and [str(i.address) for i in up.interfaces] == ["198.51.100.12/24", "203.0.113.1/24"]
    assert lab.node("br2").hubs == ("lb",)  # the only hub candidate: the cluster, not its members
    assert "cl-lb" in {s.name for s in lab.segments}


def test_node_configs(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE)
    gw1, br1, up = (build_node_config(lab, lab.node(n)) for n in ("gw1", "br1", "lb-up"))
    assert gw1.ike is not None and gw1.ike.local_id == "lb"  # the cluster's identity
    assert [(p.name, p.local_ts, p.remote_ts, p.initiate) for p in gw1.ike.peers] == [
        ("br1", ("10.0.1.0/24",), ("10.1.0.0/24",), False), ("br2", ("10.0.1.0/24",), ("10.2.0.0/24",), False)]
    assert [(r.dst, r.via) for r in gw1.routes] == [("0.0.0.0/0", "203.0.113.1")]
    ext = gw1.extensions["cluster"]
    assert ext["virtual_address"] == "203.0.113.2/24" and ext["members"]["gw2"]["address"] == "203.0.113.11"
    assert len(ext["key"]) == 64
    assert br1.ike is not None
    (peer,) = br1.ike.peers
    assert (peer.name, peer.remote_id, peer.address) == ("lb", "lb", "203.0.113.2")
    assert peer.remote_ts == ("10.0.1.0/24", "10.0.2.0/24")  # the member narrows to its own
    assert br1.extensions["redirect"] == {"peers": {"lb": "203.0.113.2"}}
    assert br1.ike.dpd_retries == 3 and gw1.ike.dpd_retries is None  # a dead member: 1.5 s after the check
    assert [(r.dst, r.via) for r in br1.routes] == [("203.0.113.0/24", "198.51.100.12")]
    assert up.ike is None and up.routes == ()


def test_shipped_loadbalancer_topology() -> None:
    lab = load_topology(TOPOLOGIES / "loadbalancer.yml")
    (c,) = lab.clusters
    assert c.members == ("gw1", "gw2", "gw3") and c.upstream == "edge" and c.advert_int_s == 0.1
    assert len([n for n in lab.routers if n.role == "branch"]) == 6
    assert all(lab.node(f"br{i}").hubs == ("lb",) for i in range(1, 7))


@pytest.mark.parametrize(("extra", "where", "problem"), [
    ("    address: 198.51.100.50\n", "clusters.lb.address",
     "198.51.100.50 is not a usable address of the cluster's segment 203.0.113.0/24"),
    ("    address: 203.0.113.1\n", "clusters.lb.address", "203.0.113.1 is the upstream router's address on the segment"),
    ("    segment: 198.51.100.0/25\n", "clusters.lb.segment",
     "segment 198.51.100.0/25 overlaps the underlay (internet) 198.51.100.0/24"),
    ("    segment: 10.0.1.0/24\n", "clusters.lb.segment", "segment 10.0.1.0/24 overlaps gw1's LAN 10.0.1.0/24"),
    ("    metric: capacity\n", "clusters.lb.capacity",
     "metric capacity needs a capacity above 0 for every member (missing: gw1, gw2)"),
    ("    metric: capacity\n    capacity: {gw1: 10}\n", "clusters.lb.capacity",
     "metric capacity needs a capacity above 0 for every member (missing: gw2)"),
    ("    weights: {gw9: 2}\n", "clusters.lb.weights", "'gw9' is not a member (members: gw1, gw2)"),
    ("    vrrp: {priorities: {gw1: 255}}\n", "clusters.lb.vrrp.priorities", "priority of 'gw1' must be 1..254, got 255"),
    ("    vrrp: {version: 2, advert_int: 0.5}\n", "clusters.lb.vrrp",
     "advert_int of VRRPv2 is whole seconds: use version: 3 for sub-second adverts"),
    ("    redirect: later\n", "clusters.lb.redirect", "'later' is not valid (expected 'init' or 'auth')"),
    ("    upstream: {name: br1}\n", "clusters.lb.upstream.name", "upstream router name 'br1' is already used by a node"),
    ("    key: short\n", "clusters.lb.key", "key is shorter than 8 characters"),
    ("    members: [gw1, gw1]\n", "clusters.lb.members", "member 'gw1' is listed twice"),
])
def test_errors(tmp_path: Path, extra: str, where: str, problem: str) -> None:
    text = BASE.replace("    members: [gw1, gw2]\n", "    members: [gw1, gw2]\n" + extra) if "members:" not in extra \
        else BASE.replace("    members: [gw1, gw2]\n", extra)
    assert error(tmp_path, text) == (where, problem)


def test_member_named_as_hub(tmp_path: Path) -> None:
    assert error(tmp_path, BASE.replace("hubs: [lb]", "hubs: [gw1]")) == (
        "nodes.br1.hubs", "'gw1' is a member of cluster 'lb': name the cluster instead")


def test_cluster_name_taken(tmp_path: Path) -> None:
    assert error(tmp_path, BASE.replace("  lb:\n", "  br1:\n").replace("hubs: [lb]", "hubs: [br1]")) == (
        "clusters.br1", "name 'br1' is already used by a node")


def test_swarm_is_planned_with_its_clients(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE + "    swarm: {clients: 5, legacy: 1}\n")
    sw = lab.node("lb-sw")
    assert sw.role == "swarm" and sw.public_address == IPv4Address("198.51.100.13")
    cfg = build_node_config(lab, sw)
    assert cfg.interfaces[0].addresses[1:3] == ("198.18.0.1/22", "198.18.0.2/22")
    assert cfg.extensions["swarm"]["legacy"] == 1 and len(cfg.extensions["swarm"]["clients"]) == 5
    assert cfg.ike is not None and cfg.ike.peers[0].address == "203.0.113.2" and cfg.ike.dpd_retries == 3
    gw1 = build_node_config(lab, lab.node("gw1"))
    assert gw1.ike is not None and [p.name for p in gw1.ike.peers][-5:] == [f"sw{i:04d}" for i in range(5)]
    up = build_node_config(lab, lab.node("lb-up"))
    assert [(r.dst, r.via) for r in up.routes] == [("198.18.0.0/22", "198.51.100.13")]


def test_measure_adds_a_swarm_to_the_shipped_topology() -> None:
    from vpnlab.measure.balance import with_swarm

    lab = with_swarm(TOPOLOGIES / "loadbalancer.yml", 300, 3, "lb-bal")
    assert lab.name == "lb-bal" and lab.clusters[0].swarm_clients == 300
    assert lab.node("lb-sw").role == "swarm"


def test_swarm_errors(tmp_path: Path) -> None:
    assert error(tmp_path, BASE + "    swarm: {clients: 5, legacy: 6}\n") == (
        "clusters.lb.swarm", "legacy 6 is more than clients 5")
    assert error(tmp_path, BASE + "    swarm: {clients: 5, prefix: 10.1.0.0/24}\n") == (
        "clusters.lb.swarm.prefix", "prefix 10.1.0.0/24 overlaps br1's LAN 10.1.0.0/24")


def test_a_branch_may_follow_redirects_of_its_hubs_too(tmp_path: Path) -> None:
    lab = load(tmp_path, """\
        name: t
        secret: {psk: k}
        nodes:
          hub: {role: hub, lan: 10.0.0.0/24, implementation: strongswan}
          br1: {role: branch, hubs: [hub], lan: 10.1.0.0/24, follow_redirects: true}
          br2: {role: branch, hubs: [hub], lan: 10.2.0.0/24}
        """)
    br1, br2 = (build_node_config(lab, lab.node(n)) for n in ("br1", "br2"))
    assert br1.extensions["redirect"] == {"peers": {"hub": str(lab.node("hub").public_address)}}
    assert "redirect" not in br2.extensions
    where, problem = error(tmp_path, BASE.replace("lan: 10.0.1.0/24}", "lan: 10.0.1.0/24, follow_redirects: true}", 1))
    assert where == "nodes.gw1" and "follow_redirects" in problem
