"""Routing contexts in the agent: the plan of devices, rules and routes per method (no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpnlab.nodeconfig import build_node_config
from vpnlab.topology import plan as topology_plan
from vpnlab.topology.loader import read_yaml, validate
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.contexts import routing
from vpnlab_agent.contexts.config import contexts_of

TOPOLOGY = Path(__file__).resolve().parents[3] / "topologies" / "hsvpn.yml"


def config_for(method: str, node: str, plain_branch: bool = False) -> NodeConfig:
    data = read_yaml(TOPOLOGY)
    data["context_method"] = method
    if plain_branch:
        data["nodes"]["br9"] = {"role": "branch", "lan": "10.9.9.0/24", "hosts": 1}
    lab = topology_plan.plan_lab(validate(str(TOPOLOGY), data), TOPOLOGY, str(TOPOLOGY))
    # through JSON, as the agent reads it
    return NodeConfig.from_json(build_node_config(lab, lab.node(node)).to_json())


def ops(steps: list[routing.Step], op: str) -> list[dict]:
    return [dict(s.args) for s in steps if s.op == op]


@pytest.mark.parametrize("method", ["hsvpn", "tunnel-in-tunnel", "per-network"])
def test_every_context_table_ends_unreachable(method: str) -> None:
    cfg = contexts_of(config_for(method, "br1").extensions)
    assert cfg is not None and [c.name for c in cfg.contexts] == ["corp", "voice", "guest"]
    steps = routing.plan(cfg, vrf=False, tunnel_mtu=1418)
    guards = [r for r in ops(steps, "route") if r.get("type") == "unreachable"]
    assert sorted(g["table"] for g in guards) == [101, 102, 103]
    assert all(g["dst_len"] == 0 and g["metric"] == routing.GUARD_METRIC for g in guards)
    # the LAN's connected route leaves main and goes into the context's table
    assert {"dev": "c-guest0", "dst": "10.1.1.0", "dst_len": 24} in ops(steps, "unroute")
    assert {"table": 103, "dst": "10.1.1.0", "dst_len": 24, "dev": "c-guest0", "scope": 253, "src": "10.1.1.1"} in ops(steps, "route")


def test_rules_mode_binds_interfaces_and_tun_devices() -> None:
    cfg = contexts_of(config_for("hsvpn", "br1").extensions)
    assert cfg is not None
    steps = routing.plan(cfg, vrf=False, tunnel_mtu=1418)
    rules = [r for r in ops(steps, "rule") if "iif" in r]
    assert {(r["iif"], r["table"]) for r in rules} == {
        ("c-corp0", 101), ("t-corp", 101), ("c-voice0", 102), ("t-voice", 102), ("c-guest0", 103), ("t-guest", 103),
    }
    # every packet entering a context carries its table as mark, and the mark picks the table, so
    # the router's own ICMP errors (fwmark_reflect) about it are routed in that context
    assert {(r["fwmark"], r["table"]) for r in ops(steps, "rule") if "fwmark" in r} == {(101, 101), (102, 102), (103, 103)}
    script = routing.nft_script(ops(steps, "nft")[0]["marks"])
    assert 'iifname "t-guest" meta mark set 103' in script and 'iifname "c-corp0" meta mark set 101' in script


def test_tunnel_in_tunnel_vxlan_per_context() -> None:
    cfg = contexts_of(config_for("tunnel-in-tunnel", "hub").extensions)
    assert cfg is not None and cfg.endpoint == "100.127.0.1"
    steps = routing.plan(cfg, vrf=True, tunnel_mtu=1418)
    assert ops(steps, "vxlan")[0] == {"name": "x-corp", "vni": 1001, "local": "100.127.0.1", "port": 4789, "mtu": 1368}
    # head-end replication towards each branch's endpoint
    assert [f["dst"] for f in ops(steps, "fdb") if f["dev"] == "x-guest"] == ["100.127.0.2", "100.127.0.3", "100.127.0.4"]
    assert {"dev": "x-guest", "master": "v-guest"} in ops(steps, "master")
    assert {"dev": "c-guest0", "master": "v-guest"} in ops(steps, "master")
    assert not [r for r in ops(steps, "rule") if "iif" in r] and not ops(steps, "unroute")  # the VRF does both
    # VXLAN routes its outer packets with the inner packet's mark: the endpoints stay in main
    assert {"to": "100.127.0.0/24", "table": 254, "priority": routing.ENDPOINT_PRIORITY} in ops(steps, "rule")
    # br2's guest LAN via br2's guest transit address, in the guest table only
    assert {"table": 103, "dst": "10.1.2.0", "dst_len": 24, "via": "100.127.3.3", "dev": "x-guest"} in ops(steps, "route")


def test_vrf_mode_marks_by_tc_and_per_network_on_xfrm_has_no_tun_devices() -> None:
    """per-network on the kernel XFRM engine: VRF devices, no TUN devices, and what enters each
    context gets its table as mark by tc (a kernel with VRF may have no nftables for IPv4), which
    the context's SAs match (dataplane/xfrm_specs.py)."""
    cfg = contexts_of(config_for("per-network", "br1").extensions)
    assert cfg is not None
    steps = routing.plan(cfg, vrf=True, tunnel_mtu=1418, extra_devices=False)
    assert not ops(steps, "nft")
    assert ops(steps, "tcmark") == [{"dev": "c-corp0", "mark": 101}, {"dev": "c-voice0", "mark": 102},
                                    {"dev": "c-guest0", "mark": 103}]
    assert {(m["dev"], m["master"]) for m in ops(steps, "master")} == {
        ("c-corp0", "v-corp"), ("c-voice0", "v-voice"), ("c-guest0", "v-guest")}
    # decrypted packets carry the mark too (the inbound state sets it): it picks the table
    assert {(r["fwmark"], r["table"]) for r in ops(steps, "rule") if "fwmark" in r} == {(101, 101), (102, 102), (103, 103)}
    assert not [s for s in steps if "t-" in str(s.get("dev", ""))]


def test_per_network_may_run_on_either_engine_hsvpn_only_on_userspace() -> None:
    from vpnlab_agent.contexts.wiring import engine_choice

    for dataplane in ("auto", "xfrm", "userspace"):
        config = config_for("per-network", "br1")
        config = NodeConfig.from_json(config.to_json().replace('"dataplane": "auto"', f'"dataplane": "{dataplane}"'))
        preference, options = engine_choice(config)
        assert preference == dataplane and [c.table for c in options["contexts"]] == [101, 102, 103]
    assert engine_choice(config_for("hsvpn", "br1"))[0] == "userspace"


def test_per_network_has_one_peer_per_context_with_own_identity() -> None:
    ike = config_for("per-network", "hub").ike
    assert ike is not None
    names = [p.name for p in ike.peers]
    assert names[:3] == ["br1.corp", "br1.voice", "br1.guest"] and len(names) == 9
    p = ike.peers[2]
    assert (p.remote_id, p.local_id, p.local_ts, p.remote_ts) == (
        "guest.br1", "guest.hub", ("10.1.0.0/24", "10.1.2.0/24", "10.1.3.0/24"), ("10.1.1.0/24",))


def test_hsvpn_has_one_peer_per_site_pair() -> None:
    ike = config_for("hsvpn", "br3").ike
    assert ike is not None and [p.name for p in ike.peers] == ["hub"]
    assert ike.peers[0].local_ts == ("10.1.3.0/24", "10.2.3.0/24")  # corp and guest share one selector


@pytest.mark.parametrize("method", ["hsvpn", "tunnel-in-tunnel"])
def test_plain_lans_stay_off_the_tunnels_of_branches_with_only_contexts(method: str) -> None:
    hub = config_for(method, "hub", plain_branch=True).ike
    assert hub is not None
    peers = {p.name: p for p in hub.peers}
    assert not any("10.9.9.0/24" in p.local_ts for name, p in peers.items() if name != "br9")
    assert "10.9.9.0/24" in peers["br9"].remote_ts
    br1 = config_for(method, "br1", plain_branch=True).ike
    assert br1 is not None and "10.9.9.0/24" not in br1.peers[0].remote_ts
