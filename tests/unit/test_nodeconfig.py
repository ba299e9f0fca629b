"""Node configs for the classic star, checked against the shipped hub-spoke lab and odd cases."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vpnlab.errors import LabError
from vpnlab.nodeconfig import build_node_config
from vpnlab.topology import load_topology
from vpnlab_agent.config import InterfaceConfig, NodeConfig, PeerConfig

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


@pytest.fixture(scope="module")
def lab():
    return load_topology(TOPOLOGIES / "hub-spoke.yml")


def test_hub(lab) -> None:
    cfg = build_node_config(lab, lab.node("hub"))
    assert (cfg.lab, cfg.name, cfg.role, cfg.implementation) == ("hub-spoke", "hub", "hub", "agent")
    assert cfg.public_address == "198.51.100.10"
    assert cfg.interfaces == (
        InterfaceConfig("wan0", "wan", ("198.51.100.10/24",)),
        InterfaceConfig("lan0", "lan", ("10.0.0.1/24",)),
    )
    assert cfg.lan_subnets == ("10.0.0.0/24",)
    assert cfg.routes == ()
    assert cfg.ike is not None
    assert (cfg.ike.local_id, cfg.ike.psk) == ("hub", "vpnlab-hub-spoke-psk")
    assert cfg.ike.peers == (
        PeerConfig("br1", "br1", "198.51.100.11", False, ("10.0.0.0/24", "10.2.0.0/24", "10.3.0.0/24"), ("10.1.0.0/24",),
                   psk=PSK),
        PeerConfig("br2", "br2", "198.51.100.12", False, ("10.0.0.0/24", "10.1.0.0/24", "10.3.0.0/24"), ("10.2.0.0/24",),
                   psk=PSK),
        PeerConfig("br3", "br3", "198.51.100.13", False, ("10.0.0.0/24", "10.1.0.0/24", "10.2.0.0/24"), ("10.3.0.0/24",),
                   psk=PSK),
    )
    assert cfg.extensions == {"mesh": {"enabled": False, "idle_timeout_s": 300, "max_tunnels": None, "device": None,
                                       "hole_punching": False, "behind_nat": False, "nat_type": None,
                                       "relay": False, "count_pairs": False}}


PSK = "vpnlab-hub-spoke-psk"


def test_branch(lab) -> None:
    cfg = build_node_config(lab, lab.node("br2"))
    assert cfg.role == "branch" and cfg.public_address == "198.51.100.12"
    assert cfg.ike is not None
    assert cfg.ike.peers == (
        PeerConfig("hub", "hub", "198.51.100.10", True, ("10.2.0.0/24",), ("10.0.0.0/24", "10.1.0.0/24", "10.3.0.0/24"),
                   psk=PSK),
    )


def test_every_tunnel_is_mirrored(lab) -> None:
    """What a branch proposes is exactly what its hub accepts for it, with sides swapped."""
    hub = build_node_config(lab, lab.node("hub"))
    assert hub.ike is not None
    for peer in hub.ike.peers:
        branch = build_node_config(lab, lab.node(peer.name))
        assert branch.ike is not None
        (mine,) = branch.ike.peers
        assert (mine.local_ts, mine.remote_ts) == (peer.remote_ts, peer.local_ts)
        assert mine.initiate and not peer.initiate


def test_json_round_trip(lab) -> None:
    for node in lab.routers:
        cfg = build_node_config(lab, node)
        assert NodeConfig.from_json(cfg.to_json()) == cfg


def test_hosts_have_no_config(lab) -> None:
    with pytest.raises(LabError, match="br1-h1 is a host"):
        build_node_config(lab, lab.node("br1-h1"))


def test_two_hubs_multi_lan_and_strongswan(tmp_path: Path) -> None:
    p = tmp_path / "t.yml"
    p.write_text(
        textwrap.dedent(
            """\
            name: t
            secret: {psk: k}
            defaults: {dataplane: userspace, mesh: {enabled: true}}
            nodes:
              east: {role: hub}
              west: {role: gateway, implementation: strongswan, lan: [172.16.0.0/24, 172.16.1.0/24]}
              a: {role: branch, hubs: [east, west]}
              b: {role: branch, hubs: [west], dataplane: xfrm}
            """
        )
    )
    lab = load_topology(p)
    west = build_node_config(lab, lab.node("west"))
    assert (west.role, west.implementation, west.dataplane) == ("gateway", "strongswan", "userspace")
    assert [i.name for i in west.interfaces] == ["wan0", "lan0", "lan1"]
    assert west.ike is not None
    assert [(p.name, p.local_ts) for p in west.ike.peers] == [
        ("a", ("172.16.0.0/24", "172.16.1.0/24", "10.2.0.0/24")),
        ("b", ("172.16.0.0/24", "172.16.1.0/24", "10.1.0.0/24")),
    ]
    a = build_node_config(lab, lab.node("a"))
    assert a.ike is not None
    assert [(p.name, p.address, p.remote_ts) for p in a.ike.peers] == [
        ("east", "198.51.100.10", ("10.0.0.0/24",)),
        ("west", "198.51.100.11", ("172.16.0.0/24", "172.16.1.0/24", "10.2.0.0/24")),
    ]
    assert build_node_config(lab, lab.node("b")).dataplane == "xfrm"
    assert a.extensions["mesh"]["enabled"] is True


def test_branch_behind_nat_has_no_address_at_the_hub(tmp_path: Path) -> None:
    p = tmp_path / "t.yml"
    p.write_text("name: t\nsecret: {psk: k}\nnodes:\n  hub: {role: hub}\n  br1: {role: branch, nat: true}\n")
    lab = load_topology(p)
    hub = build_node_config(lab, lab.node("hub"))
    assert hub.ike is not None and hub.ike.peers[0].address is None
    assert build_node_config(lab, lab.node("br1")).public_address is None
