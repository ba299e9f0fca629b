"""IKE_SA_INIT under load: retransmissions that cross answers, cookies switched on and off, and a
slow responder. Each request version must be answered so that AUTH verifies against the message
the initiator really signed (RFC 7296 §2.1, §2.6); leftovers must not stay half-open."""

from __future__ import annotations

import random

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import handshake
from vpnlab_agent.ike.codec import Notify, decode, decode_header
from vpnlab_agent.ike.constants import ExchangeType, NotifyType
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import AuthFailed, ChildSAUp, IkeSADown, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

HUB = "198.51.100.1"
LAN_HUB = ("10.0.0.0/24",)


def branch(i: int, proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",)) -> IkeEndpoint:
    peer = PeerConfig("hub", "hub.example", HUB, True, (f"10.{i // 250 + 1}.{i % 250}.0/24",), LAN_HUB)
    return IkeEndpoint(IkeConfig(local_id=f"b{i}.example", psk="s3cret", peers=(peer,), ike_proposals=proposals),
                       f"203.0.113.{i + 1}" if i < 250 else f"192.0.2.{i - 249}", force_encap=False)


def hub(branches: list[IkeEndpoint], proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",),
        **kw: object) -> IkeEndpoint:
    peers = tuple(PeerConfig(f"b{i}", f"b{i}.example", None, False, LAN_HUB, b.config.peers[0].local_ts)
                  for i, b in enumerate(branches))
    return IkeEndpoint(IkeConfig(local_id="hub.example", psk="s3cret", peers=peers, ike_proposals=proposals),
                       HUB, force_encap=False, **kw)  # type: ignore[arg-type]


def sent(ep: IkeEndpoint, now: float) -> list[bytes]:
    return [d for d, _addr, _port in ep.datagrams_to_send(now)]


def feed(dst: IkeEndpoint, src: IkeEndpoint, data: bytes, now: float) -> None:
    dst.receive_datagram(data, (src.local_addr, 500), 500, now)


def notify_types(data: bytes) -> list[int]:
    return [p.notify_type for p in decode(data).payloads if isinstance(p, Notify)]


def test_cookieless_retransmission_answered_first_then_cookie_version_still_authenticates() -> None:
    """The order that broke AUTH at 200 branches: the hub asks for a cookie, the branch's
    retransmitted cookie-less request arrives once the hub no longer asks for cookies and is
    answered, then the cookie version arrives. The branch signs the cookie version."""
    a = branch(0)
    h = hub([a], cookie_threshold=0)  # every new IKE_SA_INIT must carry a cookie
    a.connect("hub", 0.0)
    (init1,) = sent(a, 0.0)
    feed(h, a, init1, 0.0)
    (cookie_answer,) = sent(h, 0.0)
    assert notify_types(cookie_answer) == [NotifyType.COOKIE]
    a.handle_timer(0.5)
    (init1_again,) = sent(a, 0.5)  # retransmitted before the COOKIE answer arrived
    assert init1_again == init1
    feed(a, h, cookie_answer, 0.6)
    (init2,) = sent(a, 0.6)
    assert notify_types(init2)[0] == NotifyType.COOKIE
    h.cookie_threshold = 50  # the half-open SAs of other branches completed meanwhile
    feed(h, a, init1_again, 0.7)
    (resp,) = sent(h, 0.7)
    feed(h, a, init2, 0.8)
    assert sent(h, 0.8) == [resp]  # the same SA, KE and nonce: the same answer
    lb = Loopback(a, h, now=0.9)
    feed(a, h, resp, 0.9)
    lb.run(5.0)
    assert [type(e) for e in lb.take_events(h.local_addr)] == [IkeSAUp, ChildSAUp]
    assert [type(e) for e in lb.take_events(a.local_addr)] == [IkeSAUp, ChildSAUp]
    assert h.status(5.0)["half_open"] == 0 and len(h.status(5.0)["ike_sas"]) == 1


def test_different_offer_with_the_same_spi_is_not_taken_for_a_retransmission() -> None:
    a = branch(0)
    h = hub([a])
    a.connect("hub", 0.0)
    (init1,) = sent(a, 0.0)
    feed(h, a, init1, 0.0)
    assert len(sent(h, 0.0)) == 1
    (session,) = a._sessions.values()
    session.ni = bytes(32)  # the same SPI and address, another nonce: not the request we answered
    handshake.send_init(session, 0.1)
    (other,) = sent(a, 0.1)
    assert decode_header(other).spi_i == decode_header(init1).spi_i and other != init1
    feed(h, a, other, 0.1)
    assert sent(h, 0.1) == []


def test_late_invalid_ke_for_the_group_already_switched_to_is_ignored() -> None:
    a = branch(0, ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-prfsha256-x25519"))
    h = hub([a], ("aes128gcm16-prfsha256-x25519",))
    a.connect("hub", 0.0)
    (init1,) = sent(a, 0.0)
    feed(h, a, init1, 0.0)
    (bad_ke,) = sent(h, 0.0)
    assert notify_types(bad_ke) == [NotifyType.INVALID_KE_PAYLOAD]
    a.handle_timer(0.5)
    (init1_again,) = sent(a, 0.5)
    feed(h, a, init1_again, 0.5)
    (bad_ke_again,) = sent(h, 0.5)
    feed(a, h, bad_ke, 0.6)
    (init2,) = sent(a, 0.6)  # now with an x25519 KE
    feed(a, h, bad_ke_again, 0.7)  # the answer to the retransmission: stale
    assert sent(a, 0.7) == []
    lb = Loopback(a, h, now=0.8)
    feed(h, a, init2, 0.8)
    lb.run(5.0)
    assert [type(e) for e in lb.take_events(a.local_addr)] == [IkeSAUp, ChildSAUp]


def test_half_open_leftover_from_an_abandoned_attempt_goes_when_the_branch_gets_in() -> None:
    a = branch(0)
    h = hub([a])
    lb = Loopback(a, h)
    # The hub's answers to the first attempt are lost, so the branch gives up and starts again
    # with a new SPI; the hub still holds the first attempt half-open.
    first: dict[str, bytes] = {}

    def lose_first_attempts_answers(data: bytes, src: tuple, dst: tuple) -> bool:
        hdr = decode_header(data)
        first.setdefault("spi", hdr.spi_i)
        return src[0] == HUB and hdr.spi_i == first["spi"]

    lb.drop = lose_first_attempts_answers
    a.connect("hub", 0.0)
    lb.run(20.0)
    assert [type(e) for e in lb.take_events(a.local_addr)] == [IkeSADown]
    assert h.status(20.0)["half_open"] == 1
    a.connect("hub", 20.0)
    lb.run(21.0)
    assert [type(e) for e in lb.take_events(a.local_addr)] == [IkeSAUp, ChildSAUp]
    st = h.status(21.0)
    assert st["half_open"] == 0 and [s["state"] for s in st["ike_sas"]] == ["established"]


def test_slow_hub_with_300_branches_every_one_authenticates() -> None:
    """A hub that takes up to 2 s to answer (as on 2 busy cores) while 300 branches connect at
    once: retransmissions cross answers and the cookie threshold is crossed both ways."""
    rnd = random.Random(7)
    branches = [branch(i) for i in range(300)]
    h = hub(branches, cookie_threshold=50)
    lb = Loopback(h, *branches)
    lb.delay = lambda data, src, dst: rnd.uniform(0.0, 2.0) if dst[0] == HUB else rnd.uniform(0.0, 0.2)
    for i, b in enumerate(branches):
        b.connect("hub", i * 0.003)
    lb.run(60.0)
    hub_events = lb.take_events(HUB)
    assert not [e for e in hub_events if isinstance(e, AuthFailed)]
    for b in branches:
        evs = lb.take_events(b.local_addr)
        assert not [e for e in evs if isinstance(e, (AuthFailed, IkeSADown))], (b.config.local_id, evs)
        assert b.is_up("hub")
    inits = [data for src, _dst, data in lb.trace
             if src[0] != HUB and decode_header(data).exchange == ExchangeType.IKE_SA_INIT]
    assert len(inits) - len(set(inits)) > 100  # the load really made branches retransmit
    assert len(set(inits)) > 350  # and ask again with cookies
    st = h.status(lb.now)
    assert st["half_open"] == 0
    assert sum(s["state"] == "established" for s in st["ike_sas"]) == 300
    assert h.internal_errors == 0
