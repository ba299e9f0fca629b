"""Hole punching between branches behind NAT (mesh/punch.py), with real IKE endpoints and mesh
drivers on the in-memory loopback and NAT devices that let in only replies (natsim.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from vpnlab_agent.dataplane.base import NAT_KEEPALIVE
from vpnlab_agent.ike.codec import decode_header
from vpnlab_agent.mesh import messages as m
from vpnlab_agent.mesh import punch
from vpnlab_agent.mesh.config import HubView, MeshConfig
from vpnlab_agent.mesh.manager import MeshManager

_spec = importlib.util.spec_from_file_location("mesh_natsim", Path(__file__).with_name("natsim.py"))
natsim = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["mesh_natsim"] = natsim  # dataclasses look their module up
_spec.loader.exec_module(natsim)  # type: ignore[union-attr]
build = natsim.build

B1, B2 = "10.1.0.10", "10.2.0.10"  # hosts in br1's and br2's LANs


def _init_sent(lab, src: str, to: tuple[str, int]) -> int:
    """IKE_SA_INIT requests `src` sent to `to` (before any NAT)."""
    ep = lab.eps[src].local_addr
    return sum(1 for s, d, data in lab.lb.trace
               if s[0] == ep and d == to and decode_header(data).exchange == 34 and not decode_header(data).response)


def test_two_branches_behind_eim_nats_get_a_direct_shortcut_at_each_others_mapping() -> None:
    lab = build({"br1": "eim", "br2": "eim"})
    hub_sees = {b: lab.sas("hub", b)[0]["remote"] for b in ("br1", "br2")}
    assert hub_sees == {"br1": "198.51.100.101:4500", "br2": "198.51.100.102:4500"}
    t0 = lab.lb.now
    assert lab.drivers["br2"].session_seen(B1, B2, t0)  # B = br2 saw a session from br1's LAN
    lab.settle(t0 + 1)
    [sa] = lab.sas("br1", "br2")
    assert sa["state"] == "established" and sa["initiator"] and sa["remote"] == hub_sees["br2"]
    assert sa["local"] == "100.64.1.2:4500" and sa["nat"] == {"local": True, "remote": True, "encap": True}
    [back] = lab.sas("br2", "br1")
    assert back["remote"] == hub_sees["br1"]  # B sees A at A's NAT's public mapping
    # B punched once, to A's mapping, before A's IKE_SA_INIT came; A's punch hit B's closed NAT
    assert lab.punches["br2"] == [(("198.51.100.101", 4500), True)]
    assert lab.punches["br1"] == [(("198.51.100.102", 4500), False)]
    assert _init_sent(lab, "br1", ("198.51.100.102", 4500)) == 1  # no retransmission was needed
    cut = lab.drivers["br1"].status(lab.lb.now)["shortcuts"][0]
    assert cut["address"] == "198.51.100.102:4500" and cut["punch"] == {"to": "198.51.100.102:4500", "sent": 1}
    tl = cut["timeline"]
    assert tl["punch"] == tl["relayed"] == t0 and tl["ike_sa_init"] - t0 == punch.LEAD_S
    # the shortcut's child SAs win over the hub tunnel's and their ESP goes to the NAT mapping
    [child] = [c for c in lab.children["br1"] if c.name == "br2"]
    assert child.preference > 0 and (child.remote_addr, child.remote_port) == ("198.51.100.102", 4500)


def test_a_late_ack_costs_one_ike_retransmission_and_punches_stay_bounded() -> None:
    lab = build({"br1": "eim", "br2": "eim"})
    hub = "198.51.100.10"
    lab.lb.delay = lambda data, src, dst: 0.3 if src[0] == hub and dst[0] == "198.51.100.102" else 0.0
    t0 = lab.lb.now
    lab.drivers["br2"].session_seen(B1, B2, t0)
    lab.settle(t0 + 10)
    assert lab.sas("br1", "br2")[0]["state"] == "established"
    assert lab.nats["br2"].dropped >= 1  # A's first IKE_SA_INIT came before B's punch
    assert _init_sent(lab, "br1", ("198.51.100.102", 4500)) == 2
    up = lab.drivers["br1"].status(lab.lb.now)["shortcuts"][0]["timeline"]["routes_switched"]
    assert 0.5 < up - t0 < 1.0
    assert 1 <= len(lab.punches["br2"]) <= len(punch.PUNCH_AT_S)  # stops once up


def test_no_way_in_falls_back_to_the_hub_within_the_request_timeout() -> None:
    lab = build({"br1": "eim", "br2": "eim"})
    lab.punch_lost.add("br2")  # B's punches never leave: its NAT stays closed to A
    t0 = lab.lb.now
    lab.drivers["br2"].session_seen(B1, B2, t0)
    lab.settle(t0 + 12)
    assert not lab.eps["br1"].is_dynamic("br2") and not lab.eps["br2"].is_dynamic("br1")
    assert lab.eps["br1"].is_up("hub") and lab.eps["br2"].is_up("hub")  # the star carries it
    assert len(lab.punches["br2"]) == len(punch.PUNCH_AT_S)
    assert _init_sent(lab, "br1", ("198.51.100.102", 4500)) <= 5  # IKE's bounded retransmissions
    refused = lab.drivers["br2"].status(lab.lb.now)["refused"]
    assert [r["code"] for r in refused] == ["TIMEOUT"] and "hole punching to 198.51.100.101:4500" in refused[0]["reason"]
    assert "10.1.0.0/24" in lab.drivers["br2"].status(lab.lb.now)["holddown"]
    n = len(lab.lb.trace)
    assert not lab.drivers["br2"].session_seen("10.1.0.11", B2, lab.lb.now)  # held down: no storm
    lab.settle(lab.lb.now + 1)
    assert len(lab.punches["br2"]) == len(punch.PUNCH_AT_S) and len(lab.lb.trace) - n < 10


def test_symmetric_nat_keeps_the_pair_on_the_hub_and_both_sides_say_why_in_one_line() -> None:
    lab = build({"br1": "eim", "br2": "symmetric"})
    assert lab.sas("hub", "br2")[0]["remote"] != "198.51.100.102:4500"  # a random port
    t0 = lab.lb.now
    lab.drivers["br2"].session_seen(B1, B2, t0)  # B is the symmetric one
    lab.settle(t0 + 1)
    line = ("shortcut br1→br2 not tried: br2 is behind a symmetric NAT (address-and-port-dependent mapping)")
    for node in ("br1", "br2"):
        [r] = lab.drivers[node].status(lab.lb.now)["refused"]
        assert r["code"] == "REQUESTER_SYMMETRIC" and r["line"] == line
    assert lab.punches["br1"] == lab.punches["br2"] == [] and not lab.sas("br1", "br2")
    lab.drivers["br1"].session_seen(B2, "10.1.0.10", lab.lb.now)  # now A would be the symmetric one
    lab.settle(lab.lb.now + 1)
    r = lab.drivers["br1"].status(lab.lb.now)["refused"][-1]
    assert r["code"] == "INITIATOR_SYMMETRIC"
    assert r["line"] == "shortcut br2→br1 not tried: br2 is behind a symmetric NAT (address-and-port-dependent mapping)"


def test_behind_a_symmetric_nat_the_requester_initiates_to_a_public_branch() -> None:
    lab = build({"br1": "public", "br2": "symmetric"})
    t0 = lab.lb.now
    lab.drivers["br2"].session_seen(B1, B2, t0)  # B = br2 cannot be reached; A = br1 is public
    lab.settle(t0 + 1)
    [sa] = lab.sas("br2", "br1")
    assert sa["state"] == "established" and sa["initiator"] and sa["remote"] == "198.51.100.11:4500"
    assert lab.punches["br1"] == lab.punches["br2"] == []
    st1, st2 = lab.drivers["br1"].status(lab.lb.now), lab.drivers["br2"].status(lab.lb.now)
    assert [(s["peer"], s["role"], s["state"]) for s in st1["shortcuts"]] == [("br2", "acceptor", "up")]
    assert [(s["peer"], s["role"], s["state"]) for s in st2["shortcuts"]] == [("br1", "requester", "up")]
    assert st1["refused"] == st2["refused"] == []  # REVERSE is no refusal
    assert [c for c in lab.children["br1"] if c.name == "br2"][0].preference > 0
    # the other way round it is as always: the branch behind NAT builds to the public one
    lab.drivers["br1"].session_seen(B2, "10.1.0.11", lab.lb.now)
    lab.settle(lab.lb.now + 1)
    assert len(lab.sas("br2", "br1")) == 1


def test_two_branches_on_one_nat_device_are_not_tried() -> None:
    lab = build({"br1": "eim", "br2": "eim"}, shared=("br1", "br2"))
    assert lab.sas("hub", "br1")[0]["remote"] == "198.51.100.101:4500"
    seen = lab.sas("hub", "br2")[0]["remote"]
    assert seen.startswith("198.51.100.101:") and seen != "198.51.100.101:4500"  # another port of that device
    lab.drivers["br2"].session_seen(B1, B2, lab.lb.now)
    lab.settle(lab.lb.now + 1)
    [r] = lab.drivers["br2"].status(lab.lb.now)["refused"]
    assert r["code"] == "SAME_NAT" and r["line"] == (
        "shortcut br1→br2 not tried: both are behind the same NAT device (it does not hairpin)")
    assert lab.punches["br1"] == [] and not lab.sas("br1", "br2")


def test_public_initiator_punched_by_a_branch_behind_nat_and_the_other_way_round_as_before() -> None:
    lab = build({"br1": "public", "br2": "eim"})
    t0 = lab.lb.now
    lab.drivers["br2"].session_seen(B1, B2, t0)  # br1 (public) builds to br2's mapping
    lab.settle(t0 + 1)
    assert lab.sas("br1", "br2")[0]["remote"] == "198.51.100.102:4500"
    assert lab.punches["br2"] == [(("198.51.100.11", 4500), True)]
    lab2 = build({"br1": "public", "br2": "eim"})
    lab2.drivers["br1"].session_seen(B2, B1, lab2.lb.now)  # br2 (behind NAT) builds to br1: no punch
    lab2.settle(lab2.lb.now + 1)
    assert lab2.sas("br2", "br1")[0]["remote"] == "198.51.100.11:4500"
    assert lab2.punches["br1"] == lab2.punches["br2"] == []


def test_without_hole_punching_the_lancom_rule_holds() -> None:
    lab = build({"br1": "eim", "br2": "eim"}, punching=False)
    lab.drivers["br2"].session_seen(B1, B2, lab.lb.now)
    lab.settle(lab.lb.now + 1)
    assert lab.drivers["br2"].status(lab.lb.now)["refused"][0]["code"] == "NO_PUBLIC_ADDRESS"
    assert lab.punches["br2"] == [] and not lab.sas("br1", "br2")


def test_the_hub_tells_a_branch_behind_nat_its_mapping_and_a_punch_is_one_keepalive_byte() -> None:
    lab = build({"br1": "eim", "br2": "public"})
    nat = lab.drivers["br1"].status(lab.lb.now)["nat"]
    assert nat["mappings"] == {"hub": "198.51.100.101:4500"} and nat["source"].startswith("topology")
    assert "nat" in lab.drivers["br2"].status(lab.lb.now) and not lab.drivers["br2"].status(lab.lb.now)["nat"]["behind_nat"]
    assert lab.drivers["hub"].status(lab.lb.now)["branches"]["br1"]["mapping"] == "198.51.100.101:4500"
    assert NAT_KEEPALIVE == b"\xff"  # what the service sends for a punch (RFC 3948 §2.3): no plaintext


def _branch(nat_type: str | None) -> MeshManager:
    cfg = MeshConfig("br1", "branch", True, 50, lan_subnets=("10.1.0.0/24",), hole_punching=True, nat_type=nat_type,
                     hubs=(HubView("hub1", (), ("10.9.0.0/16",)), HubView("hub2", (), ("10.9.0.0/16",))))
    return MeshManager(cfg)


def test_two_hubs_measure_the_nat_type_over_the_topologys() -> None:
    mgr = _branch("endpoint-independent")
    assert (mgr.nat.type, mgr.nat.source) == ("endpoint-independent", "topology (the NAT device's type)")
    for hub, port in (("hub1", 4500), ("hub2", 40001)):
        mgr.notify_received(hub, m.MeshNotify.MAPPING, m.encode(m.MeshMapping(0, ("198.51.100.101", port))), 0.0)
    assert mgr.nat.type == "symmetric" and mgr.nat.source.startswith("measured")
    assert mgr.nat.flags() == m.NatFlag.BEHIND_NAT | m.NatFlag.SYMMETRIC | m.NatFlag.PUNCH
    mgr.notify_received("hub2", m.MeshNotify.MAPPING, m.encode(m.MeshMapping(0, ("198.51.100.101", 4500))), 0.0)
    assert mgr.nat.type == "endpoint-independent" and mgr.nat.source.startswith("measured")
    mgr.hub_down("hub2", 1.0)
    assert mgr.nat.source.startswith("topology")
    unknown = _branch(None)
    assert unknown.nat.type == "unknown" and unknown.nat.flags() == m.NatFlag.BEHIND_NAT | m.NatFlag.PUNCH
    # a MAPPING from anything but a hub is ignored
    unknown.notify_received("br9", m.MeshNotify.MAPPING, m.encode(m.MeshMapping(0, ("192.0.2.1", 1))), 0.0)
    assert unknown.nat.mappings == {}


def test_a_branch_that_missed_the_hubs_mapping_asks_for_it() -> None:
    lab = build({"br1": "eim", "br2": "public"})
    lab.drivers["br1"].manager.nat.mappings.clear()  # as if it came before the mesh service listened
    lab.drivers["br1"].ike_up("hub", lab.lb.now, True)  # the service starting: driver.start()
    lab.drivers["br1"].run_actions(lab.lb.now)
    lab.settle(lab.lb.now + 1)
    assert lab.drivers["br1"].status(lab.lb.now)["nat"]["mappings"] == {"hub": "198.51.100.101:4500"}


def test_the_hub_tells_a_branch_behind_nat_when_its_mapping_changes_and_only_then() -> None:
    from vpnlab_agent.mesh.relay import HubRelay

    hub = HubRelay(MeshConfig("hub", "hub", False, 200, branches={"br1": ("10.1.0.0/24",), "br2": ("10.2.0.0/24",)},
                              relay=True))
    hub.branch_up("br1", True, 0.0, ("198.51.100.101", 4500), behind_nat=True)
    hub.branch_up("br2", True, 0.0, ("198.51.100.12", 4500))  # public: nothing to tell
    sent = [hub.next_action(), hub.next_action()]
    assert sent[1] is None and sent[0].peer == "br1"
    assert m.decode(sent[0].notify_type, sent[0].body) == m.MeshMapping(0, ("198.51.100.101", 4500))
    hub.branch_mapped("br1", ("198.51.100.101", 4500), 1.0, behind_nat=True)
    assert hub.next_action() is None  # unchanged
    hub.branch_mapped("br1", ("198.51.100.101", 61000), 2.0, behind_nat=True)  # a rebinding (PeerMoved)
    a = hub.next_action()
    assert m.decode(a.notify_type, a.body) == m.MeshMapping(0, ("198.51.100.101", 61000))
    assert hub.status(2.0)["branches"]["br1"]["mapping"] == "198.51.100.101:61000"
    hub.branch_down("br1", 3.0)
    assert "mapping" not in hub.status(3.0)["branches"]["br1"]
