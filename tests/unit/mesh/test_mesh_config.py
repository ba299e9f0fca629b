"""From the topology file to what the agent's mesh logic sees (orchestrator -> NodeConfig -> MeshConfig)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vpnlab.nodeconfig import build_node_config
from vpnlab.topology.loader import TopologyError, load_topology
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.mesh.config import HubView, MeshConfig, mesh_wanted

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"


def configs() -> dict[str, NodeConfig]:
    lab = load_topology(TOPOLOGIES / "mesh.yml")
    return {n.name: NodeConfig.from_json(build_node_config(lab, n).to_json()) for n in lab.routers}


def test_mesh_lab_branches_and_hub() -> None:
    cfgs = configs()
    br1 = MeshConfig.from_node(cfgs["br1"])
    assert br1.enabled and br1.role == "branch" and br1.limit == 8 and br1.idle_timeout_s == 300
    assert br1.hubs == (HubView("hub", ("10.0.0.0/24",), ("10.0.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24")),)
    assert br1.router_addresses == ("10.1.0.1",) and br1.public_address is not None
    assert MeshConfig.from_node(cfgs["br3"]).idle_timeout_s == 60
    br4 = MeshConfig.from_node(cfgs["br4"])
    assert br4.public_address is None and cfgs["br4"].extensions["mesh"]["behind_nat"] is True
    hub = MeshConfig.from_node(cfgs["hub"])
    assert hub.relay and not hub.enabled and hub.limit == 8  # max_tunnels from the defaults, under the cap
    assert hub.branches == {f"br{i}": (f"10.{i}.0.0/24",) for i in range(1, 5)}
    assert all(mesh_wanted(c) for c in cfgs.values())


def test_hub_relays_only_when_a_branch_wants_mesh(tmp_path: Path) -> None:
    p = tmp_path / "t.yml"
    p.write_text("name: t\nsecret: {psk: k}\nnodes:\n  hub: {role: hub}\n  br1: {role: branch}\n")
    lab = load_topology(p)
    hub = build_node_config(lab, lab.node("hub"))
    assert hub.extensions["mesh"]["relay"] is False
    assert not mesh_wanted(hub)  # a star lab's hub runs no mesh service: nothing can hold readiness back
    assert not mesh_wanted(build_node_config(lab, lab.node("br1")))
    counting = dataclasses.replace(lab.node("hub"), mesh=dataclasses.replace(lab.node("hub").mesh, count_pairs=True))
    assert mesh_wanted(build_node_config(lab, counting))  # `measure hub-traffic` counts the star's pairs
    assert MeshConfig.from_node(build_node_config(lab, lab.node("br1"))).limit == 50  # CPE 19xx default


def test_device_category_sets_the_limit(tmp_path: Path) -> None:
    p = tmp_path / "t.yml"
    p.write_text("name: t\nsecret: {psk: k}\ndefaults: {mesh: {enabled: true}}\nnodes:\n  hub: {role: hub}\n"
                 "  br1: {role: branch, mesh: {device: cpe-88x}}\n")
    lab = load_topology(p)
    assert MeshConfig.from_node(build_node_config(lab, lab.node("br1"))).limit == 6
    assert MeshConfig.from_node(build_node_config(lab, lab.node("hub"))).limit == 200
    p.write_text("name: t\nsecret: {psk: k}\nnodes:\n  hub: {role: hub, mesh: {device: r2d2}}\n")
    with pytest.raises(TopologyError, match="unknown mesh device 'r2d2'"):
        load_topology(p)


def test_hub_counters_ruleset_and_parse() -> None:
    import json

    from vpnlab_agent.mesh import hubcount

    ps = hubcount.pairs({"br1": ("10.1.0.0/24",), "br2": ("10.2.0.0/24",)})
    text = hubcount.ruleset(ps)
    assert 'ip saddr 10.1.0.0/24 ip daddr 10.2.0.0/24 counter comment "br1>br2 10.1.0.0/24>10.2.0.0/24"' in text
    assert "icmp type redirect counter drop" in text
    listing = {"nftables": [{"metainfo": {}}, {"rule": {"comment": "br1>br2 x>y", "expr": [
        {"match": {}}, {"counter": {"packets": 3, "bytes": 300}}]}},
        {"rule": {"comment": "no redirects into tunnels", "expr": [{"counter": {"packets": 1, "bytes": 1}}]}}]}
    assert hubcount.parse_counters(json.dumps(listing)) == {("br1", "br2"): (3, 300)}


def test_conntrack_line_parsing() -> None:
    from vpnlab_agent.mesh.conntrack import parse_event

    line = ("    [NEW] tcp      6 120 SYN_SENT src=10.1.0.10 dst=10.2.0.10 sport=40000 dport=5201 [UNREPLIED] "
            "src=10.2.0.10 dst=10.1.0.10 sport=5201 dport=40000 id=1")
    assert parse_event(line) == ("10.1.0.10", "10.2.0.10")
    assert parse_event(" [UPDATE] tcp 6 src=1.2.3.4 dst=5.6.7.8") is None
    assert parse_event("[NEW] garbage") is None
