"""Node configs of the underlay features: branches behind NAT devices, NAT devices, hub to hub."""

from __future__ import annotations

import textwrap
from pathlib import Path

from vpnlab.nodeconfig import build_node_config
from vpnlab.topology import load_topology
from vpnlab_agent.config import RouteConfig


def lab_of(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    p = tmp_path / "t.yml"
    p.write_text(textwrap.dedent(text))
    return load_topology(p)


NAT_LAB = """\
name: t
secret: {psk: k}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24}
  cgn: {role: nat, type: symmetric, mapping_timeout: 9}
  br1: {role: branch, nat: cgn, lan: 10.1.0.0/24}
"""


def test_a_branch_behind_nat_runs_from_its_private_wan_with_a_default_route_via_the_device(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, NAT_LAB)
    cfg = build_node_config(lab, lab.node("br1"))
    assert cfg.public_address is None
    assert cfg.interfaces[0].addresses == ("100.64.0.10/24",)
    assert cfg.routes == (RouteConfig(dst="0.0.0.0/0", via="100.64.0.1"),)
    hub = build_node_config(lab, lab.node("hub"))
    assert [(p.name, p.address, p.initiate) for p in hub.ike.peers] == [("br1", None, False)]  # type: ignore[union-attr]


def test_a_nat_device_gets_no_ike_and_its_rules_input(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, NAT_LAB)
    cfg = build_node_config(lab, lab.node("cgn"))
    assert (cfg.role, cfg.implementation, cfg.ike) == ("nat", "nat", None)
    nat = cfg.extensions["nat"]
    assert (nat["type"], nat["mapping_timeout_s"], nat["public"], nat["inside"]) == ("symmetric", 9, "198.51.100.11", "100.64.0.0/24")
    assert nat["branches"] == [{"name": "br1", "address": "100.64.0.10"}]


TWO_HUBS = """\
name: t
secret: {psk: k}
nodes:
  h1: {role: hub, lan: 10.0.0.0/24}
  h2: {role: hub, lan: 10.9.0.0/24}
  a: {role: branch, hubs: [h1], lan: 10.1.0.0/24}
  b: {role: branch, hubs: [h2], lan: 10.2.0.0/24}
  d: {role: branch, hubs: [h1, h2], lan: 10.3.0.0/24}
"""


def _peers(lab, name):  # type: ignore[no-untyped-def]
    return {p.name: p for p in build_node_config(lab, lab.node(name)).ike.peers}  # type: ignore[union-attr]


def test_hubs_of_one_lab_have_a_tunnel_with_each_others_exclusive_sites(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, TWO_HUBS)
    h1, h2 = _peers(lab, "h1")["h2"], _peers(lab, "h2")["h1"]
    assert (h1.initiate, h2.initiate) == (True, False)  # the first hub in the file starts it
    assert h1.address == "198.51.100.11" and h2.address == "198.51.100.10"
    # d sits on both hubs: each reaches it directly, so it is on neither side of the hub tunnel
    assert h1.local_ts == ("10.0.0.0/24", "10.1.0.0/24") and h1.remote_ts == ("10.9.0.0/24", "10.2.0.0/24")
    assert (h2.local_ts, h2.remote_ts) == (h1.remote_ts, h1.local_ts)


def test_a_branch_on_one_hub_reaches_the_other_hubs_site_through_its_hub(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, TWO_HUBS)
    a = _peers(lab, "a")["h1"]
    assert set(a.remote_ts) == {"10.0.0.0/24", "10.3.0.0/24", "10.9.0.0/24", "10.2.0.0/24"}
    assert set(_peers(lab, "h1")["a"].local_ts) == set(a.remote_ts)


def test_a_dual_hub_branch_reaches_each_hubs_own_lan_only_directly(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, TWO_HUBS)
    peers = _peers(lab, "d")
    assert set(peers["h1"].remote_ts) == {"10.0.0.0/24", "10.1.0.0/24"}
    assert set(peers["h2"].remote_ts) == {"10.9.0.0/24", "10.2.0.0/24"}


def test_gateways_are_not_meshed(tmp_path: Path) -> None:
    lab = lab_of(tmp_path, "name: t\nsecret: {psk: k}\nnodes:\n  g1: {role: gateway}\n  g2: {role: gateway}\n")
    assert _peers(lab, "g1") == {}
