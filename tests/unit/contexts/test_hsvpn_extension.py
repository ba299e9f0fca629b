"""The HSVPN extension with real IKE endpoints in memory: the tag map negotiated in IKE_AUTH and on
rekey, only with a peer that announces the Vendor ID; the per-network context of a peer."""

from __future__ import annotations

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.contexts.config import ContextConfig, ContextsConfig, Reach
from vpnlab_agent.contexts.extension import (
    HSVPN_TAGS,
    VENDOR_ID,
    ContextOfPeer,
    HsvpnExtension,
    decode_map,
    encode_map,
)
from vpnlab_agent.contexts.trailer import HsvpnTrailer
from vpnlab_agent.esp.trailer import RFC4303
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import ChildSAUp, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

A, B = "198.51.100.1", "198.51.100.2"


def contexts(peer: str, names: tuple[str, ...], method: str = "hsvpn") -> ContextsConfig:
    numbers = {"corp": 1, "voice": 2, "guest": 3}
    return ContextsConfig(
        method,
        tuple(ContextConfig(n, numbers[n], 100 + numbers[n], (f"c-{n}0",), ("10.1.1.0/24",)) for n in names),
        tuple(Reach(peer, n, ("10.1.1.0/24",), ("10.1.0.0/24",)) for n in names),
    )


def pair(exts_a: list, exts_b: list) -> tuple[IkeEndpoint, IkeEndpoint, Loopback]:
    ca = IkeConfig("br1", "k", peers=(PeerConfig("hub", "hub", B, True, ("10.1.1.0/24",), ("10.1.0.0/24",)),))
    cb = IkeConfig("hub", "k", peers=(PeerConfig("br1", "br1", None, False, ("10.1.0.0/24",), ("10.1.1.0/24",)),))
    ea = IkeEndpoint(ca, A, force_encap=True, extensions=exts_a)
    eb = IkeEndpoint(cb, B, force_encap=False, extensions=exts_b)
    return ea, eb, Loopback(ea, eb)


def children(lb: Loopback, addr: str) -> list:
    return [e.child for e in lb.take_events(addr) if isinstance(e, ChildSAUp)]


def test_map_round_trip_and_refusals() -> None:
    m = {1: "corp", 3: "guest"}
    assert decode_map(encode_map(m)) == m
    for bad in (b"", b"\x02\x00", encode_map(m) + b"x", b"\x01\x01\x00\x00\x04corp"):
        try:
            decode_map(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_tag_map_is_the_contexts_both_carry_and_survives_a_rekey() -> None:
    ea, eb, lb = pair([HsvpnExtension(contexts("hub", ("corp", "voice", "guest")))],
                      [HsvpnExtension(contexts("br1", ("corp", "guest")))])
    ea.connect("hub", 0.0)
    lb.run(1.0)
    (ca,), (cb,) = children(lb, A), children(lb, B)
    want = HsvpnTrailer({1: "corp", 3: "guest"})  # voice: only br1 has it, so it is not in the map
    assert ca.trailer == want and cb.trailer == want
    assert ea.rekey_child("hub", lb.now) == 1
    lb.run(2.0)
    (ra,), (rb,) = children(lb, A), children(lb, B)
    assert ra.spi_in != ca.spi_in and ra.trailer == rb.trailer == want
    assert ea.internal_errors == eb.internal_errors == 0


def test_ike_sa_rekeys_keep_the_tag_map_and_leave_no_state_behind() -> None:
    # The children move to the new IKE SA (RFC 7296 §2.18) and a child rekey on it negotiates the
    # same map; what the extension keeps per IKE SA goes with the IKE SA, so a long-lived tunnel
    # (an IKE rekey every few hours) does not grow it without bound.
    xa, xb = HsvpnExtension(contexts("hub", ("corp", "voice", "guest"))), HsvpnExtension(contexts("br1", ("corp", "guest")))
    ea, eb, lb = pair([xa], [xb])
    ea.connect("hub", 0.0)
    lb.run(1.0)
    children(lb, A), children(lb, B)
    want = HsvpnTrailer({1: "corp", 3: "guest"})
    for i in range(6):
        assert (ea.rekey_ike("hub", lb.now) if i % 2 else eb.rekey_ike("br1", lb.now))
        lb.run(lb.now + 1)
        for ep, peer in ((ea, "hub"), (eb, "br1")):  # one after the other: both at once would collide
            assert ep.rekey_child(peer, lb.now) == 1
            lb.run(lb.now + 1)
        got = children(lb, A) + children(lb, B)
        assert len(got) == 4 and all(c.trailer == want for c in got), got
    live = {s.local_spi for s in ea.sas()} | {s.local_spi for s in eb.sas()}
    assert set(xa._proposed) <= live and set(xb._proposed) <= live, (xa._proposed, xb._proposed)
    assert ea.internal_errors == eb.internal_errors == 0


def test_a_peer_without_the_vendor_id_gets_plain_sas() -> None:
    ea, eb, lb = pair([HsvpnExtension(contexts("hub", ("corp",)))], [])
    ea.connect("hub", 0.0)
    lb.run(1.0)
    (ca,), (cb,) = children(lb, A), children(lb, B)
    assert ca.trailer == RFC4303 and cb.trailer == RFC4303
    # and the other way round: a responder with HSVPN never tags towards an initiator without it
    ea, eb, lb = pair([], [HsvpnExtension(contexts("br1", ("corp",)))])
    ea.connect("hub", 0.0)
    lb.run(1.0)
    (ca,), (cb,) = children(lb, A), children(lb, B)
    assert ca.trailer == RFC4303 and cb.trailer == RFC4303
    (up,) = [e for e in lb.take_events(A) if isinstance(e, IkeSAUp)] or [None]
    assert up is None or VENDOR_ID in up.vendor_ids


def test_an_answer_cannot_add_a_tag_that_was_not_offered() -> None:
    class Liar(HsvpnExtension):
        def payloads(self, sa, msg):  # answers with more than it was asked
            out = super().payloads(sa, msg)
            if msg.response and out:
                from vpnlab_agent.ike.codec import Notify

                return [Notify(0, b"", HSVPN_TAGS, encode_map({1: "corp", 9: "voice"}))]
            return out

    ea, eb, lb = pair([HsvpnExtension(contexts("hub", ("corp",)))], [Liar(contexts("br1", ("corp",)))])
    ea.connect("hub", 0.0)
    lb.run(1.0)
    (ca,) = children(lb, A)
    assert ca.trailer == HsvpnTrailer({1: "corp"})


def test_per_network_children_belong_to_their_context() -> None:
    ext = ContextOfPeer(contexts("hub.guest", ("guest",), "per-network"))
    ea, eb, lb = pair([ext], [])
    # the peer of this pair is called "hub"; a per-network peer is "hub.guest"
    assert ext.context_of == {"hub.guest": ("guest", 103)}  # the context's table is its XFRM mark
    ea.connect("hub", 0.0)
    lb.run(1.0)
    (ca,) = children(lb, A)
    assert ca.context == ""  # not a per-context peer


def test_per_network_peers_are_told_apart_by_their_identities() -> None:
    """Two peers between the same two routers with identical selectors (overlapping contexts):
    the per-peer local_id makes them two IKE SAs, each child in its own context."""
    sel_a, sel_b = ("10.1.1.0/24",), ("10.1.0.0/24",)
    peers_a = tuple(PeerConfig(f"hub.{c}", f"{c}.hub", B, True, sel_a, sel_b, local_id=f"{c}.br1") for c in ("corp", "guest"))
    peers_b = tuple(PeerConfig(f"br1.{c}", f"{c}.br1", None, False, sel_b, sel_a, local_id=f"{c}.hub") for c in ("corp", "guest"))
    cfg_a = ContextsConfig("per-network", contexts("x", ("corp", "guest")).contexts,
                           tuple(Reach(f"hub.{c}", c, sel_a, sel_b) for c in ("corp", "guest")))
    cfg_b = ContextsConfig("per-network", contexts("x", ("corp", "guest")).contexts,
                           tuple(Reach(f"br1.{c}", c, sel_b, sel_a) for c in ("corp", "guest")))
    ea = IkeEndpoint(IkeConfig("br1", "k", peers=peers_a), A, force_encap=True, extensions=[ContextOfPeer(cfg_a)])
    eb = IkeEndpoint(IkeConfig("hub", "k", peers=peers_b), B, force_encap=False, extensions=[ContextOfPeer(cfg_b)])
    lb = Loopback(ea, eb)
    ea.connect("hub.corp", 0.0)
    ea.connect("hub.guest", 0.0)
    lb.run(1.0)
    got_a = {c.name: (c.context, c.mark, c.if_id) for c in children(lb, A)}
    got_b = {c.name: (c.context, c.mark) for c in children(lb, B)}
    # the mark is the context's table (what the contexts service marks its packets with); no if_id:
    # a policy with one matches only traffic routed through an XFRM interface
    assert got_a == {"hub.corp": ("corp", 101, 0), "hub.guest": ("guest", 103, 0)}
    assert got_b == {"br1.corp": ("corp", 101), "br1.guest": ("guest", 103)}
