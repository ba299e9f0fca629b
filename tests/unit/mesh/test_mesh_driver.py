"""Mesh signalling over real IKE: three IkeEndpoints (hub, br1, br2) on the in-memory loopback, each
with its MeshDriver; the shortcut is a real IKE SA + child SA negotiated between the branches."""

from __future__ import annotations

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import ChildSAUp
from vpnlab_agent.ike.loopback import Loopback
from vpnlab_agent.mesh.config import HubView, MeshConfig
from vpnlab_agent.mesh.driver import MeshDriver

HUB, BR = "198.51.100.10", {"br1": "198.51.100.11", "br2": "198.51.100.12", "br3": "198.51.100.13"}
HUB_LAN = "10.0.0.0/24"
LAN = {"br1": "10.1.0.0/24", "br2": "10.2.0.0/24", "br3": "10.3.0.0/24"}


def build(names=("br1", "br2"), *, vendor_less: tuple[str, ...] = (), idle: float = 300, nat: tuple[str, ...] = ()):
    peers = tuple(PeerConfig(b, b, BR[b], False, (HUB_LAN,) + tuple(LAN[o] for o in names if o != b), (LAN[b],))
                  for b in names)
    hub_ep = IkeEndpoint(IkeConfig("hub", "psk", peers=peers), HUB, force_encap=True)
    hub_cfg = MeshConfig("hub", "hub", False, 200, lan_subnets=(HUB_LAN,),
                         branches={b: (LAN[b],) for b in names}, relay=True)
    eps, drivers = {"hub": hub_ep}, {"hub": MeshDriver(hub_cfg, hub_ep)}
    for b in names:
        reached = (HUB_LAN,) + tuple(LAN[o] for o in names if o != b)
        ep = IkeEndpoint(IkeConfig(b, "psk", peers=(PeerConfig("hub", "hub", HUB, True, (LAN[b],), reached),)),
                         BR[b], force_encap=True, **({"vendor_id": b"strongSwan"} if b in vendor_less else {}))
        cfg = MeshConfig(b, "branch", True, 50, idle_timeout_s=idle, public_address=None if b in nat else BR[b],
                         lan_subnets=(LAN[b],), router_addresses=(LAN[b].replace("0/24", "1"),),
                         hubs=(HubView("hub", (HUB_LAN,), reached),))
        eps[b], drivers[b] = ep, MeshDriver(cfg, ep)
    lb = Loopback(*eps.values())
    addr = {name: ep.local_addr for name, ep in eps.items()}
    children: dict[str, list] = {n: [] for n in eps}

    def settle(until: float | None = None) -> None:
        for _ in range(50):
            lb.run(lb.now if until is None else until)
            moved = False
            for name, d in drivers.items():
                for ev in lb.take_events(addr[name]):
                    moved = True
                    if isinstance(ev, ChildSAUp):
                        children[name].append(ev.child)
                    d.on_event(ev, lb.now)
                if (t := d.get_timer()) is not None and t <= lb.now:
                    d.handle_timer(lb.now)
                    moved = True
            if not moved and not any(ep._out for ep in eps.values()):
                return

    for b in names:
        eps[b].connect("hub", 0.0)
    settle()
    return lb, eps, drivers, children, settle


def test_shortcut_over_real_ike_with_the_lans_prefixes_a_preference_and_a_timeline() -> None:
    lb, eps, drivers, children, settle = build()
    assert drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    assert eps["br1"].is_up("br2") and eps["br2"].is_up("br1")
    [sc] = [c for c in children["br1"] if c.name == "br2"]
    assert sc.local_ts == ("10.1.0.0/24",) and sc.remote_ts == ("10.2.0.0/24",)
    # the hub tunnel covers 10.2.0.0/24 too: the shortcut wins by preference, on both sides
    [via_hub] = [c for c in children["br1"] if c.name == "hub"]
    assert "10.2.0.0/24" in via_hub.remote_ts and via_hub.preference == 0
    assert sc.preference > via_hub.preference
    assert sc.remote_addr == "198.51.100.12"
    [back] = [c for c in children["br2"] if c.name == "br1"]
    assert (back.spi_in, back.spi_out) == (sc.spi_out, sc.spi_in) and back.preference == sc.preference
    st1, st2 = drivers["br1"].status(lb.now), drivers["br2"].status(lb.now)
    assert [(s["peer"], s["state"], s["role"]) for s in st1["shortcuts"]] == [("br2", "up", "initiator")]
    assert [(s["peer"], s["state"], s["role"]) for s in st2["shortcuts"]] == [("br1", "up", "requester")]
    assert set(st1["shortcuts"][0]["timeline"]) == {"relayed", "ike_sa_init", "ike_auth", "routes_switched"}
    assert drivers["hub"].status(lb.now)["counts"]["relayed"] == 1
    assert st1["errors"] == st2["errors"] == [] and eps["br1"].internal_errors == 0
    assert drivers["br1"].shortcut_spis() == {"br2": [sc.spi_in]}


def test_idle_shortcut_is_deleted_over_ike_and_hub_tunnels_stay() -> None:
    lb, eps, drivers, children, settle = build(idle=60)
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    t0 = lb.now
    settle(t0 + 61)
    assert not eps["br1"].is_up("br2") and not eps["br2"].is_up("br1")
    assert not eps["br1"].is_dynamic("br2") and not eps["br2"].is_dynamic("br1")
    assert eps["br1"].is_up("hub") and eps["br2"].is_up("hub")
    assert drivers["br1"].status(lb.now)["shortcuts"] == []
    # a new session builds it again
    assert drivers["br2"].session_seen("10.1.0.11", "10.2.0.10", lb.now)
    settle()
    assert eps["br1"].is_up("br2")


def test_crossing_triggers_make_one_ike_sa() -> None:
    lb, eps, drivers, children, settle = build()
    drivers["br1"].session_seen("10.2.0.10", "10.1.0.10", lb.now)
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    sas = [s for s in eps["br1"].status(lb.now)["ike_sas"] if s["peer"] == "br2"]
    assert len(sas) == 1 and sas[0]["initiator"] is True and sas[0]["state"] == "established"
    assert len([s for s in eps["br2"].status(lb.now)["ike_sas"] if s["peer"] == "br1"]) == 1


def test_branch_without_vendor_id_keeps_using_the_hub() -> None:
    lb, eps, drivers, children, settle = build(vendor_less=("br1",))
    assert eps["br1"].is_up("hub")  # the star is untouched
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    assert not eps["br2"].is_up("br1")
    assert drivers["br2"].status(lb.now)["refused"][0]["code"] == "PEER_NOT_CAPABLE"


def test_nat_branch_is_refused_with_reason() -> None:
    lb, eps, drivers, children, settle = build(nat=("br2",))
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    assert not eps["br1"].is_dynamic("br2")
    assert drivers["br2"].status(lb.now)["refused"][0]["code"] == "NO_PUBLIC_ADDRESS"


def test_vanished_peer_is_cleaned_up_by_dpd() -> None:
    lb, eps, drivers, children, settle = build()
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    lb.drop = lambda data, src, dst: "198.51.100.12" in (src[0], dst[0])  # br2 vanishes
    settle(lb.now + 60)
    assert drivers["br1"].status(lb.now)["shortcuts"] == []
    assert not eps["br1"].is_dynamic("br2")
    assert drivers["br1"].status(lb.now)["timeline"][0]["end"].startswith("down:")


def test_unknown_identity_cannot_use_a_shortcut_slot() -> None:
    # br3 is not accepted by br2 (no request for it): its IKE_AUTH fails.
    lb, eps, drivers, children, settle = build(("br1", "br2", "br3"))
    from vpnlab_agent.config import PeerConfig as P
    eps["br3"].add_peer(P("br2", "br2", BR["br2"], False, (LAN["br3"],), (LAN["br2"],)))
    eps["br3"].connect("br2", lb.now)
    settle()
    assert not eps["br3"].is_up("br2") and not eps["br2"].is_up("br3")


def test_dynamic_peers_cannot_replace_static_ones() -> None:
    import pytest

    from vpnlab_agent.ike.endpoint import IkeError
    lb, eps, drivers, children, settle = build()
    with pytest.raises(IkeError, match="statically"):
        eps["br1"].add_peer(PeerConfig("hub", "x", None, False, (), ()))
    with pytest.raises(IkeError, match="already belongs"):
        eps["br1"].add_peer(PeerConfig("evil", "hub", None, False, (), ()))
    with pytest.raises(IkeError, match="not a dynamic peer"):
        eps["br1"].remove_peer("hub", lb.now)


def test_initiator_retries_when_the_ack_trails_the_relay() -> None:
    """The hub's ACK to B is late (lost here until A's first attempt failed): A tries again.
    (B holds A's IKE_AUTH while it waits for an ACK, up to HOLD_AUTH_S: this ACK is later still.)"""
    lb, eps, drivers, children, settle = build()
    from vpnlab_agent.mesh.messages import MeshNotify
    held: list = []
    orig = drivers["br2"].on_event

    def late_ack(ev, now):  # br2 sees the ACK only after br1's first IKE_AUTH was refused
        if getattr(ev, "notify_type", None) == MeshNotify.ACK and not held:
            held.append(ev)
            return
        orig(ev, now)

    drivers["br2"].on_event = late_ack
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", lb.now)
    settle()
    settle(lb.now + 2.0)  # past HOLD_AUTH_S: A's retransmitted IKE_AUTH is refused
    assert not eps["br1"].is_up("br2")
    [sc] = drivers["br1"].status(lb.now)["shortcuts"]
    assert sc["state"] == "building"  # still within the request timeout, a retry is pending
    orig(held[0], lb.now)
    settle(lb.now + 1.0)
    assert eps["br1"].is_up("br2") and eps["br2"].is_up("br1")
    assert "retry_1" in drivers["br1"].status(lb.now)["shortcuts"][0]["timeline"]


def test_a_slash_32_lan_gets_a_shortcut_too() -> None:
    """The half-prefix split could not take a /32 LAN; with preferences it needs no splitting."""
    LAN["br9"], BR["br9"] = "10.9.9.9/32", "198.51.100.19"
    try:
        lb, eps, drivers, children, settle = build(("br1", "br9"))
        assert drivers["br9"].session_seen("10.1.0.10", "10.9.9.9", lb.now)
        settle()
        [sc] = [c for c in children["br1"] if c.name == "br9"]
        assert sc.remote_ts == ("10.9.9.9/32",) and sc.preference > 0
        assert eps["br9"].is_up("br1")
    finally:
        del LAN["br9"], BR["br9"]
