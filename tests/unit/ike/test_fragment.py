"""IKE fragmentation (RFC 7383) between two endpoints in memory: an RSA-2048 certificate IKE_AUTH
cut into fragments, fragments out of order, duplicated, forged, lost; a peer without support; a
path that loses large datagrams (what a small MTU with IP fragments dropped does), and the bounds."""

from __future__ import annotations

import dataclasses

import pytest

from vpnlab.pki import issue
from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import fragment
from vpnlab_agent.ike.codec import Header, decode_header
from vpnlab_agent.ike.constants import ExchangeType, NotifyType, PayloadType
from vpnlab_agent.ike.endpoint import IkeEndpoint, IkeError
from vpnlab_agent.ike.events import ChildSAUp, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

from tests.unit.ike.test_cert_auth import CA, HUB, BR1, NOW, creds

RSA = {name: issue(CA[0], CA[1], name, "rsa-2048", NOW) for name in ("hub", "br1")}
SMALL = 576  # IP datagram size: 544 bytes of IKE on port 4500


def pair(*, hub_frag: bool = True, br_frag: bool = True, size: int = SMALL) -> tuple[IkeEndpoint, IkeEndpoint, Loopback]:
    lan_h, lan_b = ("10.0.0.0/24",), ("10.1.0.0/24",)
    hub_cfg = IkeConfig(local_id="hub", psk="", auth="cert", fragmentation=hub_frag, fragment_size=size, peers=(
        PeerConfig("br1", "br1", None, False, lan_h, lan_b, auth="cert"),))
    br_cfg = IkeConfig(local_id="br1", psk="", auth="cert", fragmentation=br_frag, fragment_size=size, peers=(
        PeerConfig("hub", "hub", HUB, True, lan_b, lan_h, auth="cert"),))
    hub = IkeEndpoint(hub_cfg, HUB, force_encap=False, wall_clock=lambda: NOW,
                      credentials=creds(RSA["hub"], {"br1": RSA["br1"]}))
    br = IkeEndpoint(br_cfg, BR1, force_encap=True, wall_clock=lambda: NOW,
                     credentials=creds(RSA["br1"], {"hub": RSA["hub"]}))
    return hub, br, Loopback(hub, br)


def up(lb: Loopback, child: bool = False) -> bool:
    """Both ends have the IKE SA (and, with `child`, the first child SA) up."""
    want = (IkeSAUp, ChildSAUp) if child else (IkeSAUp,)
    return all(all(any(isinstance(e, c) for e in evs) for c in want) for evs in (lb.take_events(a) for a in (HUB, BR1)))


def hdr(data: bytes) -> Header:
    return decode_header(data)


def auth_datagrams(lb: Loopback, src: str) -> list[bytes]:
    return [d for s, _, d in lb.trace if s[0] == src and hdr(d).exchange == ExchangeType.IKE_AUTH]


def is_frag(data: bytes) -> bool:
    return hdr(data).next_payload == PayloadType.SKF


def test_rsa_certificate_ike_auth_over_small_fragments() -> None:
    hub, br, lb = pair()
    br.connect("hub", 0.0)
    lb.run(2.0)
    assert up(lb, child=True), (hub.pop_logs(), br.pop_logs())
    limit = SMALL - 20 - 8 - 4  # IPv4, UDP, non-ESP marker (port 4500)
    for who in (BR1, HUB):  # request and response both cut, every fragment within the limit
        frags = auth_datagrams(lb, who)
        assert len(frags) >= 3 and all(is_frag(d) and len(d) <= limit for d in frags)
        nums = [int.from_bytes(d[32:34], "big") for d in frags]
        totals = {int.from_bytes(d[34:36], "big") for d in frags}
        assert nums == list(range(1, len(frags) + 1)) and totals == {len(frags)}
        # the first fragment names the first inner payload, the others 0 (RFC 7383 §2.5)
        assert frags[0][28] == (PayloadType.IDi if who == BR1 else PayloadType.IDr)
        assert all(d[28] == 0 for d in frags[1:])
    assert hub.fragment_stats.reassembled == 1 and br.fragment_stats.reassembled == 1
    assert hub.internal_errors == br.internal_errors == 0
    # IKE_SA_INIT is never cut, and both announced support there
    inits = [d for _, _, d in lb.trace if hdr(d).exchange == ExchangeType.IKE_SA_INIT]
    assert inits and not any(is_frag(d) for d in inits)
    assert all(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED.to_bytes(2, "big") in d for d in inits)
    # later exchanges that fit go unfragmented
    br.rekey_child("hub", lb.now)
    lb.run(lb.now + 2.0)
    ccs = [d for _, _, d in lb.trace if hdr(d).exchange == ExchangeType.CREATE_CHILD_SA]
    assert len(ccs) == 2 and not any(is_frag(d) for d in ccs)


def held_request(lb: Loopback) -> list[bytes]:
    """Catch the branch's IKE_AUTH fragments instead of delivering them."""
    caught: list[bytes] = []

    def drop(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        if src[0] == BR1 and hdr(data).exchange == ExchangeType.IKE_AUTH and not caught:
            caught.append(data)
            return True
        if caught and src[0] == BR1 and hdr(data).exchange == ExchangeType.IKE_AUTH and len(caught) < 100:
            if hdr(data).message_id == hdr(caught[0]).message_id and data not in caught:
                caught.append(data)
                return True
        return False
    lb.drop = drop
    return caught


def test_out_of_order_and_duplicate_fragments() -> None:
    hub, br, lb = pair()
    caught = held_request(lb)
    br.connect("hub", 0.0)
    lb.deliver()
    lb.drop = None
    assert len(caught) >= 3
    # the last first, each of the first two twice, the rest in reverse order
    for d in [caught[-1], caught[-1], caught[0], caught[0], *reversed(caught[1:-1])]:
        hub.receive_datagram(d, (BR1, 4500), 4500, lb.now)
    lb.deliver()
    assert up(lb), hub.pop_logs()
    st = hub.fragment_stats
    assert st.reassembled == 1 and st.duplicates == 2 and st.invalid == 0


def test_forged_or_corrupted_fragment_is_dropped_and_counted() -> None:
    hub, br, lb = pair()
    caught = held_request(lb)
    br.connect("hub", 0.0)
    lb.deliver()
    lb.drop = None
    bad = bytearray(caught[1])
    bad[-20] ^= 0x01  # one bit of ciphertext
    forged_total = bytearray(caught[2])
    forged_total[35] += 1  # Total Fragments changed: covered by the ICV too
    for d in (bytes(bad), bytes(forged_total)):
        hub.receive_datagram(d, (BR1, 4500), 4500, lb.now)
    assert hub.fragment_stats.invalid == 2 and hub.fragment_stats.received == 0
    session = next(iter(hub._sessions.values()))
    assert session.reassembly[False].pending == 0  # nothing of a forgery is kept
    for d in caught:
        hub.receive_datagram(d, (BR1, 4500), 4500, lb.now)
    lb.deliver()
    assert up(lb)


def test_lost_fragment_retransmission_resends_all_fragments_and_one_response() -> None:
    hub, br, lb = pair()
    lost = {"req": False, "resp": False}

    def drop(data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> bool:
        h = hdr(data)
        if h.exchange != ExchangeType.IKE_AUTH or h.next_payload != PayloadType.SKF:
            return False
        num = int.from_bytes(data[32:34], "big")
        key = "resp" if h.response else "req"
        if num == 2 and not lost[key]:
            lost[key] = True  # lose fragment 2 of the request, then of the response, once each
            return True
        return False
    lb.drop = drop
    br.connect("hub", 0.0)
    lb.run(5.0)
    assert up(lb), (hub.pop_logs(), br.pop_logs())
    req, resp = auth_datagrams(lb, BR1), auth_datagrams(lb, HUB)
    n_req = int.from_bytes(req[0][34:36], "big")
    n_resp = int.from_bytes(resp[0][34:36], "big")
    # first try, then the retransmission after the lost request fragment, then the one after the
    # lost response fragment: every fragment each time; the hub answers each retransmission once
    assert len(req) == 3 * n_req
    assert len(resp) == 2 * n_resp


@pytest.mark.parametrize(("hub_frag", "br_frag"), [(False, True), (True, False)])
def test_a_peer_without_support_never_gets_a_fragment(hub_frag: bool, br_frag: bool) -> None:
    hub, br, lb = pair(hub_frag=hub_frag, br_frag=br_frag)
    br.connect("hub", 0.0)
    lb.run(2.0)
    assert up(lb)  # memory has no MTU: whole messages arrive
    assert not any(is_frag(d) for _, _, d in lb.trace)
    resp = next(d for s, _, d in lb.trace if s[0] == HUB and hdr(d).exchange == ExchangeType.IKE_SA_INIT)
    assert (NotifyType.IKEV2_FRAGMENTATION_SUPPORTED.to_bytes(2, "big") in resp) is False


def test_unsolicited_fragment_is_dropped() -> None:
    hub, br, lb = pair()
    caught = held_request(lb)
    br.connect("hub", 0.0)
    lb.deliver()
    session = next(iter(hub._sessions.values()))
    session.peer_notifies.discard(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)  # as if never announced
    hub.receive_datagram(caught[0], (BR1, 4500), 4500, lb.now)
    assert hub.fragment_stats.unsolicited == 1 and hub.fragment_stats.received == 0


def small_mtu(mtu: int):
    """A path that loses every IKE datagram larger than `mtu` (IP headers included): a lowered MTU
    on a path whose firewalls drop IP fragments."""
    return lambda data, src, dst: len(data) + 20 + 8 + (4 if dst[1] == 4500 else 0) > mtu


@pytest.mark.parametrize(("hub_frag", "br_frag", "comes_up"),
                         [(True, True, True), (False, True, False), (True, False, False)])
def test_small_mtu_path_needs_fragmentation(hub_frag: bool, br_frag: bool, comes_up: bool) -> None:
    hub, br, lb = pair(hub_frag=hub_frag, br_frag=br_frag, size=1000)
    lb.drop = small_mtu(1000)
    br.connect("hub", 0.0)
    lb.run(40.0)
    assert up(lb) is comes_up
    if not comes_up:
        assert lb.dropped > 0  # the certificate-sized IKE_AUTH was lost, every retransmission


def test_reassembly_bounds() -> None:
    st = fragment.FragmentStats()
    r = fragment.Reassembler(st)
    f = fragment.Fragment
    assert r.add(1, f(1, fragment.MAX_FRAGMENTS + 1, 35, b"x")) is None and st.over_bounds == 1
    big = b"x" * (fragment.MAX_MESSAGE_BYTES // 2 + 1)
    assert r.add(1, f(1, 3, 35, big)) is None
    assert r.add(1, f(2, 3, 0, big)) is None and st.over_bounds == 2 and r.pending == 0
    # one reassembly per direction: a newer message ID drops the older one
    r.add(1, f(1, 2, 35, b"a"))
    r.add(2, f(2, 2, 0, b"b"))
    assert st.abandoned == 1 and r.pending == 1
    # a larger Total Fragments restarts (the sender cut it smaller); a smaller one is dropped
    r.add(2, f(1, 3, 35, b"A"))
    assert st.abandoned == 2 and r.pending == 1
    assert r.add(2, f(2, 2, 0, b"B")) is None and st.invalid == 1
    r.add(2, f(3, 3, 0, b"C"))
    assert r.add(2, f(2, 3, 0, b"B")) == (35, b"ABC") and r.pending == 0


def test_sealing_refuses_too_many_fragments_and_bad_sizes() -> None:
    hub, br, lb = pair()
    br.connect("hub", 0.0)
    lb.run(2.0)
    s = next(iter(br._sessions.values()))
    from vpnlab_agent.ike.codec import VendorId
    msg = s.msg(ExchangeType.INFORMATIONAL, 5, False, [VendorId(b"v" * 60000)])
    with pytest.raises(ValueError, match="fragments"):
        fragment.seal(msg, s.sk_out, 200, fragment.FragmentStats())
    cfg = dataclasses.replace(br.config, fragment_size=100)
    with pytest.raises(IkeError, match="fragment_size 100"):
        IkeEndpoint(cfg, BR1, force_encap=True, wall_clock=lambda: NOW, credentials=creds(RSA["br1"], {}))
