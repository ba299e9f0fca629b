"""IkeEndpoint robustness in memory: loss and retransmission, DPD, cookies, INVALID_KE_PAYLOAD,
the message-ID window, private notifies and the Vendor ID gate."""

from __future__ import annotations

import pytest

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.codec import Message, Notify, UnknownPayload, decode, decode_header, encode
from vpnlab_agent.ike.constants import ExchangeType, NotifyType
from vpnlab_agent.ike.endpoint import IkeEndpoint, IkeError
from vpnlab_agent.ike.events import ChildSADeleted, ChildSAUp, IkeSADown, IkeSAUp, NotifyReceived
from vpnlab_agent.ike.loopback import Loopback
from vpnlab_agent.ike.session import RETRANSMIT_TRIES

A, B = "198.51.100.1", "198.51.100.2"
LAN_A, LAN_B = ("10.1.0.0/24",), ("10.2.0.0/24",)
PRIV = NotifyType.VPNLAB_PRIVATE_BASE + 1


def config(local_id: str, peer: str, peer_id: str, addr: str | None, lts: tuple, rts: tuple, **kw: object) -> IkeConfig:
    return IkeConfig(local_id=local_id, psk="s3cret", peers=(PeerConfig(peer, peer_id, addr, addr is not None, lts, rts),),
                     **kw)  # type: ignore[arg-type]


def pair(ike_a: tuple = ("aes128gcm16-prfsha256-ecp256",), ike_b: tuple | None = None, *,
         vendor_b: bytes | None = None, cookie_threshold: int = 50, **kw: object):
    ea = IkeEndpoint(config("a.example", "b", "b.example", B, LAN_A, LAN_B, ike_proposals=ike_a, **kw), A,
                     force_encap=True)
    extra = {"vendor_id": vendor_b} if vendor_b is not None else {}
    eb = IkeEndpoint(config("b.example", "a", "a.example", None, LAN_B, LAN_A, ike_proposals=ike_b or ike_a, **kw), B,
                     force_encap=False, cookie_threshold=cookie_threshold, **extra)
    return ea, eb, Loopback(ea, eb)


def types(events: list) -> list[type]:
    return [type(e) for e in events]


def exchanges(trace: list, src_ip: str | None = None) -> list[tuple[int, bool, int]]:
    out = []
    for src, _dst, data in trace:
        if src_ip is None or src[0] == src_ip:
            h = decode_header(data)
            out.append((h.exchange, h.response, h.message_id))
    return out


def test_handshake_survives_loss_of_every_first_transmission() -> None:
    ea, eb, lb = pair()
    seen: set[bytes] = set()

    def drop_first(data: bytes, src: tuple, dst: tuple) -> bool:
        first = data not in seen
        seen.add(data)
        return first

    lb.drop = drop_first
    ea.connect("b", 0.0)
    lb.run(10.0)
    assert types(lb.take_events(A)) == [IkeSAUp, ChildSAUp]
    assert types(lb.take_events(B)) == [IkeSAUp, ChildSAUp]
    # The responder's answers were lost once each, so it got each request twice and replayed the
    # cached response rather than processing the request again (one SA, one child).
    assert len(eb.status(lb.now)["ike_sas"]) == 1 and len(eb.status(lb.now)["child_sas"]) == 1
    assert lb.dropped == 4


def test_retransmission_is_bounded_then_peer_not_responding() -> None:
    ea, eb, lb = pair()
    lb.drop = lambda data, src, dst: True
    ea.connect("b", 0.0)
    lb.run(100.0)
    (down,) = lb.take_events(A)
    assert isinstance(down, IkeSADown) and down.reason == "peer not responding"
    inits = exchanges(lb.trace, A)
    assert inits == [(ExchangeType.IKE_SA_INIT, False, 0)] * RETRANSMIT_TRIES
    # exponential backoff: 0.5 + 1 + 2 + 4 + 8 s of waiting
    assert ea.get_timer() is None and ea.status(lb.now)["ike_sas"] == []


def test_dpd_keeps_live_peer_and_detects_dead_one() -> None:
    ea, eb, lb = pair(dpd_interval_s=10)
    ea.connect("b", 0.0)
    lb.run(60.0)
    assert types(lb.take_events(A)) == [IkeSAUp, ChildSAUp]
    infos = [x for x in exchanges(lb.trace) if x[0] == ExchangeType.INFORMATIONAL]
    assert len(infos) >= 8  # liveness checks and their answers every ~10 s
    # Now B vanishes: A notices after dpd_interval + the retransmission schedule.
    lb.drop = lambda data, src, dst: dst[0] == B
    lb.run(60.0 + 10 + 15.5 + 1)
    assert types(lb.take_events(A)) == [ChildSADeleted, IkeSADown]
    assert ea.status(lb.now)["ike_sas"] == []


def run_with_esp(lb: Loopback, feeds: dict[IkeEndpoint, int], until: float, esp_until: float) -> None:
    """Run to `until`; right before each timer, tell each endpoint in `feeds` when authentic ESP
    last came on its child (a packet every 0.1 s until `esp_until`), as IkeService does."""
    while (t := lb.next_timer()) is not None and t <= until:
        for ep, spi in feeds.items():
            ep.esp_seen({spi: int(min(t, esp_until) * 10) / 10, 0xDEAD: t}, t)  # another SPI: not ours
        lb.run(t)
    lb.run(until)


def test_inbound_esp_is_liveness_so_a_busy_tunnel_sends_no_dpd_and_a_dead_peer_is_still_found() -> None:
    # RFC 7296 §2.4: a cryptographically protected message on the IKE SA or any of its child SAs
    # proves the peer alive; a liveness check is needed only when nothing came in.
    ea, eb, lb = pair(dpd_interval_s=10)
    ea.connect("b", 0.0)
    lb.run(1.0)
    (ca,), (cb,) = [[e.child.spi_in for e in lb.take_events(x) if isinstance(e, ChildSAUp)] for x in (A, B)]
    start = len(lb.trace)
    run_with_esp(lb, {ea: ca, eb: cb}, 61.0, esp_until=61.0)  # a minute of traffic both ways
    assert [x for x in exchanges(lb.trace[start:]) if x[0] == ExchangeType.INFORMATIONAL] == []
    # traffic only from B to A: A has its proof, B has only outgoing traffic and must check
    start = len(lb.trace)
    run_with_esp(lb, {ea: ca}, 121.0, esp_until=121.0)
    checks = [x for x in exchanges(lb.trace[start:], B) if x[0] == ExchangeType.INFORMATIONAL and not x[1]]
    assert len(checks) >= 5 and not [x for x in exchanges(lb.trace[start:], A) if not x[1]], checks
    # B dies at 121: nothing from it any more, and A finds out as it would from its last IKE message
    lb.drop = lambda data, src, dst: B in (src[0], dst[0])
    run_with_esp(lb, {ea: ca}, 121.0 + 10 + 15.5 + 1, esp_until=121.0)
    assert types(lb.take_events(A)) == [ChildSADeleted, IkeSADown]
    assert ea.internal_errors == eb.internal_errors == 0


def test_esp_times_from_another_clock_are_no_proof() -> None:
    ea, eb, lb = pair(dpd_interval_s=10)
    ea.connect("b", 0.0)
    lb.run(1.0)
    (ca,) = [e.child.spi_in for e in lb.take_events(A) if isinstance(e, ChildSAUp)]
    ea.esp_seen({ca: 1000.0}, lb.now)  # later than now: not a time of ours
    start = len(lb.trace)
    lb.run(12.0)
    assert [x for x in exchanges(lb.trace[start:], A) if x[0] == ExchangeType.INFORMATIONAL and not x[1]]


def test_cookies_under_half_open_flood_and_genuine_peer_still_gets_in() -> None:
    ea, eb, lb = pair(cookie_threshold=5)
    flood = [IkeEndpoint(config(f"f{i}.example", "b", "b.example", B, LAN_A, LAN_B), f"203.0.113.{i + 1}",
                         force_encap=False) for i in range(20)]
    lbf = Loopback(eb, *flood)
    for ep in flood:
        ep.connect("b", 0.0)
    # The flooders never send IKE_AUTH (we drop everything they send after the first INIT round).
    sent: set[str] = set()

    def only_first_init(data: bytes, src: tuple, dst: tuple) -> bool:
        if src[0] == B:
            return False
        h = decode_header(data)
        if src[0] in sent or h.exchange != ExchangeType.IKE_SA_INIT:
            return True
        sent.add(src[0])
        return False

    lbf.drop = only_first_init
    lbf.deliver()
    st = eb.status(0.0)
    assert st["half_open"] == 5  # the rest got a COOKIE and no state
    cookie_answers = [d for s, _, d in lbf.trace if s[0] == B and len(d) < 100]
    assert len(cookie_answers) == 15
    # A real initiator arrives during the flood: one extra round trip with the cookie, then it is up.
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert types(lb.take_events(A)) == [IkeSAUp, ChildSAUp]
    a_inits = [x for x in exchanges(lb.trace, A) if x[0] == ExchangeType.IKE_SA_INIT]
    assert len(a_inits) == 2
    # Half-open SAs are forgotten after their timeout.
    lbf.run(40.0)
    assert eb.status(40.0)["half_open"] == 0


def test_half_open_hard_bound() -> None:
    _, eb, _ = pair(cookie_threshold=1000)
    eb.max_half_open = 10
    flood = [IkeEndpoint(config("f.example", "b", "b.example", B, LAN_A, LAN_B), f"203.0.113.{i + 1}",
                         force_encap=False) for i in range(30)]
    lbf = Loopback(eb, *flood)
    lbf.drop = lambda data, src, dst: src[0] != B and decode_header(data).exchange != ExchangeType.IKE_SA_INIT
    for ep in flood:
        ep.connect("b", 0.0)
    lbf.deliver()
    assert eb.status(0.0)["half_open"] == 10


def test_invalid_ke_payload_retry_with_requested_group() -> None:
    ea, eb, lb = pair(ike_a=("aes128gcm16-prfsha256-ecp256", "aes128gcm16-prfsha256-modp2048"),
                      ike_b=("aes128gcm16-prfsha256-modp2048",))
    ea.connect("b", 0.0)
    lb.run(1.0)
    (sa, _child) = lb.take_events(A)
    assert isinstance(sa, IkeSAUp) and sa.suite_desc.endswith("modp2048")
    inits = [d for s, _, d in lb.trace if decode_header(d).exchange == ExchangeType.IKE_SA_INIT]
    assert len(inits) == 4  # request(ecp256), INVALID_KE_PAYLOAD, request(modp2048), response


def test_retransmitted_request_gets_cached_response_not_a_second_child() -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(A), lb.take_events(B)
    # Lose B's answer to A's rekey once: A retransmits, B must replay, not rekey twice.
    dropped = []

    def drop_one_answer(data: bytes, src: tuple, dst: tuple) -> bool:
        h = decode_header(data)
        if src[0] == B and h.response and h.exchange == ExchangeType.CREATE_CHILD_SA and not dropped:
            dropped.append(data)
            return True
        return False

    lb.drop = drop_one_answer
    ea.rekey_child("b", lb.now)
    lb.run(lb.now + 5)
    assert dropped
    assert types(lb.take_events(B)) == [ChildSAUp, ChildSADeleted]
    assert types(lb.take_events(A)) == [ChildSAUp, ChildSADeleted]
    assert len(eb.status(lb.now)["child_sas"]) == 1
    answers = [d for s, _, d in lb.trace if s[0] == B and decode_header(d).exchange == ExchangeType.CREATE_CHILD_SA]
    assert len(answers) == 2 and answers[0] == answers[1]  # byte-identical replay


def test_message_id_window_of_one() -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    sess_a = next(iter(ea._sessions.values()))
    # A request two ahead of what B expects is outside the window: no answer, no effect.
    msg = Message(sess_a.spi_i, sess_a.spi_r, ExchangeType.INFORMATIONAL, sess_a.my_mid + 1, True, False, [])
    before = len(lb.trace)
    eb.receive_datagram(encode(msg, sess_a.sk_out), (A, 4500), 4500, lb.now)
    lb.deliver()
    assert len(lb.trace) == before
    # The expected ID is answered.
    msg.message_id = sess_a.my_mid
    eb.receive_datagram(encode(msg, sess_a.sk_out), (A, 4500), 4500, lb.now)
    lb.deliver()
    assert len(lb.trace) == before + 1 and decode_header(lb.trace[-1][2]).response


def test_private_notify_only_between_vpnlab_peers() -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(A), lb.take_events(B)
    ea.send_notify("b", PRIV, b"mesh-hello", lb.now)
    lb.run(lb.now + 1)
    assert lb.take_events(B) == [NotifyReceived("a", PRIV, b"mesh-hello")]
    with pytest.raises(IkeError, match="private range"):
        ea.send_notify("b", NotifyType.INITIAL_CONTACT, b"", lb.now)

    # A peer that announces another Vendor ID: we refuse to send, and ignore what it sends us.
    ea, eb, lb = pair(vendor_b=b"someone-else/1")
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(A), lb.take_events(B)
    with pytest.raises(IkeError, match="Vendor ID"):
        ea.send_notify("b", PRIV, b"x", lb.now)
    next(iter(eb._sessions.values())).send_notify(PRIV, b"sneaky", lb.now)  # bypass B's own gate
    lb.run(lb.now + 1)
    assert lb.take_events(A) == []
    assert len(lb.take_events(B)) == 0


def test_api_errors_are_one_line() -> None:
    ea, _, _ = pair()
    with pytest.raises(IkeError, match="unknown IKE peer 'zz'"):
        ea.connect("zz", 0.0)
    with pytest.raises(IkeError, match="no established IKE SA"):
        ea.rekey_child("b", 0.0)


def test_restarted_initiator_replaces_old_sa_via_initial_contact() -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(B)
    # A "reboots": a fresh endpoint with the same identity connects again.
    ea2 = IkeEndpoint(ea.config, A, force_encap=True)
    lb2 = Loopback(ea2, eb, now=2.0)
    ea2.connect("b", 2.0)
    lb2.run(3.0)
    evb = lb2.take_events(B)
    assert types(evb) == [ChildSADeleted, IkeSADown, IkeSAUp, ChildSAUp]
    assert "INITIAL_CONTACT" in evb[1].reason
    assert len(eb.status(3.0)["ike_sas"]) == 1


def test_delete_one_child_by_spi() -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    (_, up_a) = lb.take_events(A)
    lb.take_events(B)
    assert ea.delete_child_spi(up_a.child.spi_in, lb.now)
    assert not ea.delete_child_spi(12345, lb.now)
    lb.run(lb.now + 1)
    assert types(lb.take_events(A)) == [ChildSADeleted] and types(lb.take_events(B)) == [ChildSADeleted]
    assert ea.is_up("b") and ea.status(lb.now)["child_sas"] == [] == eb.status(lb.now)["child_sas"]


def test_unauthenticated_critical_payload_gets_no_answer_and_keeps_the_window() -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    sess_a = next(iter(ea._sessions.values()))
    sess_b = next(iter(eb._sessions.values()))
    # An on-path forger knows the SPIs and the next message ID, not the keys: an unknown critical
    # payload in clear (no SK payload) must not be answered nor move B's expected message ID.
    forged = Message(sess_a.spi_i, sess_a.spi_r, ExchangeType.INFORMATIONAL, sess_a.my_mid, True, False,
                     [UnknownPayload(200, True, b"x")])
    before, mid = len(lb.trace), sess_b.peer_mid
    eb.receive_datagram(encode(forged), (A, 4500), 4500, lb.now)
    lb.deliver()
    assert len(lb.trace) == before and sess_b.peer_mid == mid
    # Inside a genuine SK payload the same payload is answered with UNSUPPORTED_CRITICAL_PAYLOAD.
    eb.receive_datagram(encode(forged, sess_a.sk_out), (A, 4500), 4500, lb.now)
    lb.deliver()
    assert len(lb.trace) == before + 1 and sess_b.peer_mid == mid + 1
    answer = decode(lb.trace[-1][2], sess_a.sk_in)
    assert [n.notify_type for n in answer.find_all(Notify)] == [NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD]
    # Its retransmission gets the same answer again.
    eb.receive_datagram(encode(forged, sess_a.sk_out), (A, 4500), 4500, lb.now)
    lb.deliver()
    assert len(lb.trace) == before + 2 and lb.trace[-1][2] == lb.trace[-2][2]


@pytest.mark.parametrize("rekeyer", ["peer", "self"])
def test_requests_queued_when_the_ike_sa_is_rekeyed_go_out_on_the_new_one(rekeyer: str) -> None:
    ea, eb, lb = pair()
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(A), lb.take_events(B)
    ea.rekey_child("b", lb.now)  # outstanding: what A queues next waits behind it
    (child,) = next(iter(ea._sessions.values())).children.values()
    ea.send_notify("b", PRIV, b"mesh-hello", lb.now)
    ea.delete_child_spi(child.sa.spi_in, lb.now)  # the SA being rekeyed: its DELETE is queued too
    (eb if rekeyer == "peer" else ea).rekey_ike("a" if rekeyer == "peer" else "b", lb.now)
    lb.run(lb.now + 2)
    assert NotifyReceived("a", PRIV, b"mesh-hello") in lb.take_events(B)
    # The DELETE went out too: both sides hold the same child SAs.
    assert {c["spi_in"] for c in ea.status(lb.now)["child_sas"]} == {c["spi_out"] for c in eb.status(lb.now)["child_sas"]}
    assert {c["spi_out"] for c in ea.status(lb.now)["child_sas"]} == {c["spi_in"] for c in eb.status(lb.now)["child_sas"]}
