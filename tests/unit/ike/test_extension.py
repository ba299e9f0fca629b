"""Every extension hook with real endpoints in memory: payloads and what the peer reads of them in
each exchange, the RFC 5685 rule for IKE_SA_INIT, admission at IKE_SA_INIT and IKE_AUTH, per-child
metadata through rekeys, reconnecting elsewhere, InformationalDone, wakeup, and contained bugs."""

from __future__ import annotations

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.codec import Notify, decode_header
from vpnlab_agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import (
    AuthFailed,
    ChildSAUp,
    IkeSADown,
    IkeSAUp,
    InformationalDone,
    Redirected,
)
from vpnlab_agent.ike.extension import (
    Answer,
    AskCookie,
    ChildInfo,
    ChildMeta,
    Extension,
    InitRequest,
    MessageInfo,
    ReplyWith,
    SaView,
)
from vpnlab_agent.ike.loopback import Loopback

A, B, C = "198.51.100.1", "198.51.100.2", "198.51.100.3"
LAN_A, LAN_B = ("10.1.0.0/24",), ("10.2.0.0/24",)
PRIV = NotifyType.VPNLAB_PRIVATE_BASE + 77
EXT_VID = b"test-extension/1"
INIT, AUTH = ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH
CCS, INFO = ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL


def notify(t: int, data: bytes = b"") -> Notify:
    return Notify(ProtocolId.NONE, b"", t, data)


class Recorder(Extension):
    """Adds a private notify naming the message to every message, records what it reads."""

    name = "recorder"
    vendor_ids = (EXT_VID,)

    def __init__(self, init_notifies: frozenset[int] = frozenset(), tag: bytes = b"") -> None:
        self.init_notifies = init_notifies
        self.tag = tag
        self.seen: list[tuple[int, bool, list[int], SaView]] = []
        self.children: list[ChildInfo] = []

    def payloads(self, sa: SaView, msg: MessageInfo) -> list:
        out: list = [notify(PRIV, self.tag + bytes([msg.exchange, msg.response]))]
        if msg.exchange == INIT:
            out = [notify(NotifyType.REDIRECT_SUPPORTED), *out]
        return out

    def received(self, sa: SaView, msg: MessageInfo, payloads: list, now: float) -> None:
        types = [p.notify_type for p in payloads if isinstance(p, Notify)]
        self.seen.append((msg.exchange, msg.response, types, sa))
        if msg.child is not None:
            self.children.append(msg.child)

    def notes(self, exchange: int, response: bool) -> list[list[int]]:
        return [t for e, r, t, _ in self.seen if (e, r) == (exchange, response)]


def endpoints(*exts_a: Extension, exts_b: tuple[Extension, ...] = (), psk_b: str = "s3cret", **kw: object):
    ca = IkeConfig("a.example", "s3cret", peers=(PeerConfig("b", "b.example", B, True, LAN_A, LAN_B),))
    cb = IkeConfig("b.example", psk_b, peers=(PeerConfig("a", "a.example", None, False, LAN_B, LAN_A),))
    ea = IkeEndpoint(ca, A, force_encap=True, extensions=exts_a)
    eb = IkeEndpoint(cb, B, force_encap=False, extensions=exts_b, **kw)  # type: ignore[arg-type]
    return ea, eb


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def test_payloads_reach_the_peer_in_every_exchange_both_ways() -> None:
    ra, rb = Recorder(tag=b"a"), Recorder(tag=b"b")
    ea, eb = endpoints(ra, exts_b=(rb,))
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert ea.is_up("b") and eb.is_up("a")
    assert ea.rekey_child("b", lb.now) == 1
    lb.run(2.0)
    ref = ea.send_informational("b", [notify(PRIV, b"hello")], lb.now)
    lb.run(3.0)
    assert InformationalDone("b", ref, True) in lb.take_events(A)
    # B read A's requests, A read B's responses, each with the extension's notify in it.
    for exchange in (AUTH, CCS, INFO):
        assert any(PRIV in t for t in rb.notes(exchange, False)), exchange
        assert any(PRIV in t for t in ra.notes(exchange, True)), exchange
    # Both announce the extension's Vendor ID, and see the other's in IkeSAUp and the SA view.
    (up_b,) = of(lb.take_events(B), IkeSAUp)
    assert EXT_VID in up_b.vendor_ids and NotifyType.REDIRECT_SUPPORTED in up_b.notifies
    assert all(EXT_VID in v.vendor_ids for v in ea.sas())
    # Child exchanges tell the extension which child: the rekey names the child it replaces.
    rekeys = [c for c in rb.children if c.rekey_of is not None]
    assert rekeys and rekeys[0].local_ts == LAN_B and rekeys[0].remote_ts == LAN_A
    assert ea.internal_errors == eb.internal_errors == 0


class Lifecycle(Recorder):
    """A Recorder that also records which IKE SA replaced which, and which IKE SAs went away."""

    def __init__(self, tag: bytes = b"") -> None:
        super().__init__(tag=tag)
        self.rekeyed: list[tuple[SaView, SaView]] = []
        self.closed: list[SaView] = []

    def ike_rekeyed(self, old: SaView, new: SaView, now: float) -> None:
        self.rekeyed.append((old, new))

    def ike_closed(self, sa: SaView, now: float) -> None:
        self.closed.append(sa)


def test_an_ike_sa_rekey_goes_through_the_extensions_both_ways() -> None:
    # RFC 7296 §2.18: the IKE SA rekey is a CREATE_CHILD_SA exchange of the old IKE SA, and the new
    # IKE SA takes over its children. Extensions add to it and read it like any other exchange,
    # and learn which SA took over (state kept per IKE SA moves) and when the old one is gone.
    for rekeyer in ("a", "b"):
        ra, rb = Lifecycle(tag=b"a"), Lifecycle(tag=b"b")
        ea, eb = endpoints(ra, exts_b=(rb,))
        lb = Loopback(ea, eb)
        ea.connect("b", 0.0)
        lb.run(1.0)
        (old_a,), (old_b,) = ea.sas(), eb.sas()
        ra.seen.clear(), rb.seen.clear()
        kids = len(ra.children), len(rb.children)
        assert (ea.rekey_ike("b", lb.now) if rekeyer == "a" else eb.rekey_ike("a", lb.now))
        lb.run(2.0)
        (new_a,), (new_b,) = ea.sas(), eb.sas()
        assert new_a.local_spi != old_a.local_spi and new_a.state == "established"
        asker, answerer = (ra, rb) if rekeyer == "a" else (rb, ra)
        # the request and the response of the rekey carry each side's notify, and the other reads it
        assert [t for t in answerer.notes(CCS, False) if PRIV in t], rekeyer
        assert [t for t in asker.notes(CCS, True) if PRIV in t], rekeyer
        assert all(sa.local_spi in (old_a.local_spi, old_b.local_spi) for _, _, _, sa in ra.seen + rb.seen)
        assert (len(ra.children), len(rb.children)) == kids  # no child is negotiated in an IKE SA rekey
        # both sides are told which IKE SA took over, and then that the old one is gone (quietly:
        # no IkeSADown, the peer is still up)
        assert [(o.local_spi, n.local_spi) for o, n in ra.rekeyed] == [(old_a.local_spi, new_a.local_spi)]
        assert [(o.local_spi, n.local_spi) for o, n in rb.rekeyed] == [(old_b.local_spi, new_b.local_spi)]
        assert [v.local_spi for v in ra.closed] == [old_a.local_spi]
        assert [v.local_spi for v in rb.closed] == [old_b.local_spi]
        assert not of(lb.take_events(A) + lb.take_events(B), IkeSADown)
        # the new IKE SA keeps what extensions saw of the peer
        assert EXT_VID in new_a.vendor_ids and EXT_VID in new_b.vendor_ids
        assert ea.internal_errors == eb.internal_errors == 0
        # and an IKE SA that goes for good is reported gone too
        ea.terminate("b", lb.now)
        lb.run(3.0)
        assert [v.local_spi for v in ra.closed] == [old_a.local_spi, new_a.local_spi]
        assert [v.local_spi for v in rb.closed] == [old_b.local_spi, new_b.local_spi]


def test_from_ike_sa_init_only_the_rfc5685_notifies_an_extension_asked_for() -> None:
    wants = Recorder(init_notifies=frozenset({NotifyType.REDIRECT_SUPPORTED, NotifyType.COOKIE}))
    deaf = Recorder()
    ea, eb = endpoints(Recorder(), exts_b=(wants, deaf))
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    # COOKIE is not an RFC 5685 notify and the private one is unauthenticated here: neither passes.
    assert wants.notes(INIT, False) == [[NotifyType.REDIRECT_SUPPORTED]]
    assert deaf.notes(INIT, False) == []
    (view,) = [sa for e, _, _, sa in wants.seen if e == INIT]
    assert view.peer is None and not view.initiator  # the responder does not know who it is yet


def test_nothing_of_an_ike_auth_that_fails_reaches_an_extension() -> None:
    rb = Recorder()
    ea, eb = endpoints(Recorder(), exts_b=(rb,), psk_b="other")
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert of(lb.take_events(B), AuthFailed)
    assert rb.notes(AUTH, False) == [] and not [s for s in rb.seen if s[0] != INIT]


class Redirector(Extension):
    """RFC 5685 gateway: answers IKE_SA_INIT (or IKE_AUTH) with REDIRECT to `to`."""

    name = "redirector"

    def __init__(self, to: str, at: str = "init") -> None:
        self.to, self.at = to, at
        self.asked: list[InitRequest] = []

    def _redirect(self, nonce: bytes) -> Notify:
        gw = bytes([1, 4]) + bytes(int(x) for x in self.to.split("."))  # GW ident: IPv4 (RFC 5685 §9)
        return notify(NotifyType.REDIRECT, gw + nonce)

    def admit_init(self, req: InitRequest, now: float):
        self.asked.append(req)
        if self.at == "init" and not any(n.notify_type == NotifyType.REDIRECTED_FROM for n in req.notifies):
            return ReplyWith((self._redirect(req.nonce),))
        return None

    def admit_auth(self, sa: SaView, payloads: list, now: float):
        return [self._redirect(b"")] if self.at == "auth" else None


class Follower(Extension):
    """RFC 5685 client: announces REDIRECT_SUPPORTED and follows a REDIRECT with REDIRECTED_FROM."""

    name = "follower"
    init_notifies = frozenset({NotifyType.REDIRECT})

    def __init__(self) -> None:
        self.followed: list[str] = []

    def payloads(self, sa: SaView, msg: MessageInfo) -> list:
        return [notify(NotifyType.REDIRECT_SUPPORTED)] if msg.exchange == INIT and not msg.response else []

    def received(self, sa: SaView, msg: MessageInfo, payloads: list, now: float) -> None:
        for p in payloads:
            if isinstance(p, Notify) and p.notify_type == NotifyType.REDIRECT and sa.peer is not None:
                to = ".".join(str(b) for b in p.data[2:6])
                self.followed.append(to)
                came_from = bytes([1, 4]) + bytes(int(x) for x in sa.remote_addr[0].split("."))
                self.api.reconnect(sa.peer, to, now, init_payloads=[notify(NotifyType.REDIRECTED_FROM, came_from)])


def redirect_lab(at: str):
    follower = Follower()
    ea, eb = endpoints(follower, exts_b=(Redirector(C, at),))
    gw = Redirector(C, "never")
    ec = IkeEndpoint(IkeConfig("b.example", "s3cret", peers=(PeerConfig("a", "a.example", None, False, LAN_B, LAN_A),)),
                     C, force_encap=False, extensions=[gw])
    return ea, eb, ec, follower, gw, Loopback(ea, eb, ec)


def test_admission_at_ike_sa_init_redirects_and_the_client_follows() -> None:
    ea, eb, ec, follower, gw, lb = redirect_lab("init")
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert follower.followed == [C]
    assert eb.status(lb.now)["ike_sas"] == [] and eb.status(lb.now)["half_open"] == 0  # stateless
    assert ea.is_up("b") and [v.remote_addr[0] for v in ea.sas()] == [C]
    events = lb.take_events(A)
    assert Redirected("b", C) in events and not of(events, IkeSADown)
    # The new gateway saw where the client came from, in its own admission.
    (req,) = gw.asked
    assert {n.notify_type for n in req.notifies} == {NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM}
    # The stateless answer carried the nonce back, as RFC 5685 asks.
    redirect = next(d for s, _, d in lb.trace if s[0] == B)
    assert decode_header(redirect).spi_r == bytes(8)


def test_admission_in_ike_auth_refuses_without_establishing_and_the_client_goes_elsewhere() -> None:
    ea, eb, ec, follower, gw, lb = redirect_lab("auth")
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert follower.followed == [C]
    assert not of(lb.take_events(B), IkeSAUp)  # B authenticated A but kept no IKE SA up
    assert [s["state"] for s in eb.status(lb.now)["ike_sas"]] in ([], ["refused"])
    assert ea.is_up("b") and {v.remote_addr[0] for v in ea.sas() if v.state == "established"} == {C}
    lb.run(60.0)
    assert eb.status(lb.now)["ike_sas"] == []  # the refused SA lingered for retransmissions only
    assert ea.internal_errors == eb.internal_errors == 0


class Gate(Extension):
    name = "gate"

    def __init__(self) -> None:
        self.calls = 0

    def admit_init(self, req: InitRequest, now: float):
        self.calls += 1
        return Answer()


def test_the_cookie_policy_decides_before_extensions() -> None:
    gate = Gate()
    ea, eb = endpoints(exts_b=(gate,), cookie_threshold=0)
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert ea.is_up("b")
    # Asked for a cookie first (the gate never saw that one), then admitted by the gate.
    assert gate.calls == 1


def test_ask_cookie_from_an_extension() -> None:
    class Cookie(Extension):
        def admit_init(self, req: InitRequest, now: float):
            return None if req.cookie_first else AskCookie(b"c" * 16)

    ea, eb = endpoints(exts_b=(Cookie(),))
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert ea.is_up("b")
    inits = [d for s, _, d in lb.trace if s[0] == A and decode_header(d).exchange == INIT]
    assert len(inits) == 2


class Meta(Extension):
    name = "meta"

    def __init__(self, **meta: int) -> None:
        self.meta = meta
        self.rekeys = 0

    def child_meta(self, sa: SaView, child: ChildInfo):
        if child.rekey_of is not None:
            self.rekeys += 1
            return None  # a rekey keeps what the child had
        return ChildMeta(**self.meta)


def test_child_metadata_goes_into_child_sa_and_survives_rekeys() -> None:
    ma, mb = Meta(preference=7, mark=3), Meta(preference=5)
    ea, eb = endpoints(ma, exts_b=(mb,))
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    (ca,), (cb,) = of(lb.take_events(A), ChildSAUp), of(lb.take_events(B), ChildSAUp)
    assert (ca.child.preference, ca.child.mark, cb.child.preference, cb.child.mark) == (7, 3, 5, 0)
    ea.rekey_child("b", lb.now)
    lb.run(2.0)
    (ra,), (rb,) = of(lb.take_events(A), ChildSAUp), of(lb.take_events(B), ChildSAUp)
    assert ra.rekey_of == ca.child.spi_in and (ra.child.preference, ra.child.mark) == (7, 3)
    assert rb.child.preference == 5 and ma.rekeys == mb.rekeys == 1
    assert [c["preference"] for c in ea.status(lb.now)["child_sas"]] == [7]  # the old one is deleted


def test_informational_done_says_when_a_request_will_never_be_answered() -> None:
    ea, eb = endpoints()
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(A)
    lb.drop = lambda data, src, dst: True
    ref = ea.send_informational("b", [], lb.now)
    lb.run(100.0)
    events = lb.take_events(A)
    assert InformationalDone("b", ref, False) in events and of(events, IkeSADown)


def test_api_calls_outside_input_wake_the_owner_once() -> None:
    ea, eb = endpoints()
    woken: list[int] = []
    ea.wakeup = lambda: woken.append(1)
    ea.connect("b", 0.0)
    assert woken == [1]  # one wakeup for the IKE_SA_INIT out, however many outputs follow
    ea.datagrams_to_send(0.0)
    ea.terminate("b", 0.0)
    assert woken == [1, 1]


def test_a_buggy_extension_is_contained() -> None:
    class Buggy(Extension):
        name = "buggy"

        def payloads(self, sa, msg):
            raise RuntimeError("boom")

        def child_meta(self, sa, child):
            raise KeyError("boom")

    ea, eb = endpoints(Buggy())
    lb = Loopback(ea, eb)
    ea.connect("b", 0.0)
    lb.run(1.0)
    assert ea.is_up("b") and of(lb.take_events(A), ChildSAUp)
    assert ea.internal_errors > 0 and any("extension buggy" in line for line in ea.pop_logs())


class Expecting(Extension):
    name = "expecting"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def hold_auth(self, sa: SaView, identity: str, now: float) -> bool:
        self.asked.append(identity)
        return True


def _unknown_initiator() -> tuple[IkeEndpoint, IkeEndpoint, Expecting, Loopback]:
    exp = Expecting()
    ea, _ = endpoints()
    eb = IkeEndpoint(IkeConfig("b.example", "s3cret"), B, force_encap=False, extensions=[exp])  # knows no peer
    return ea, eb, exp, Loopback(ea, eb)


def test_a_held_ike_auth_is_answered_when_the_peer_is_added() -> None:
    ea, eb, exp, lb = _unknown_initiator()
    ea.connect("b", 0.0)
    lb.run(0.2)
    assert exp.asked == ["a.example"] and not ea.is_up("b")
    assert not [d for s, _, d in lb.trace if s[0] == B and decode_header(d).exchange == AUTH]  # unanswered
    eb.add_peer(PeerConfig("a", "a.example", None, False, LAN_B, LAN_A), lb.now)
    lb.run(0.3)
    assert ea.is_up("b") and eb.is_up("a")
    assert of(lb.take_events(A), ChildSAUp) and not of(lb.take_events(B), AuthFailed)


def test_a_held_ike_auth_is_refused_after_hold_auth_s() -> None:
    ea, eb, exp, lb = _unknown_initiator()
    ea.connect("b", 0.0)
    lb.run(10.0)
    (failed,) = of(lb.take_events(B), AuthFailed)
    assert "matches no configured peer" in failed.reason
    assert of(lb.take_events(A), IkeSADown) and len(exp.asked) >= 2  # held, then the retransmission refused
