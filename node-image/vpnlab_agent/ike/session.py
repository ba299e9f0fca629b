"""One IKE SA (RFC 7296), initiator or responder, and the child SAs it negotiated.

Sans-I/O: a session is fed decoded-header datagrams and `now`, and pushes datagrams and events to
its endpoint (`IkeEndpoint`), which owns sockets-free dispatch, cookies and peer lookup. Every
state change caused by a message goes through `_TRANSITIONS`, the one table of what a state
accepts; anything not in it is dropped. Requests we send are serialised with a window of one
(RFC 7296 §2.3): a queue of request builders, one outstanding message, retransmitted with
exponential backoff, and the peer's retransmitted requests answered from the cached response.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vpnlab_agent.config import PeerConfig
from vpnlab_agent.ike import crypto, proposals
from vpnlab_agent.ike.codec import (
    KE,
    SA,
    TSi,
    TSr,
    Auth,
    Delete,
    Header,
    IDi,
    IDr,
    IntegrityError,
    Message,
    Nonce,
    Notify,
    ParseError,
    Proposal,
    TrafficSelector,
    VendorId,
    decode,
    encode,
    payload_body,
    ts_from_cidr,
)
from vpnlab_agent.ike.constants import (
    AuthMethod,
    ExchangeType,
    NotifyType,
    ProtocolId,
    is_error_notify,
)
from vpnlab_agent.ike.events import (
    AuthFailed,
    ChildSADeleted,
    ChildSAUp,
    IkeSADown,
    IkeSAUp,
    NotifyReceived,
)
from vpnlab_agent.ike.policy import (
    cidrs,
    describe,
    identity,
    identity_text,
    narrow,
    selectors_for,
    spi_int,
    with_spi,
    within,
    without_dh,
)
from vpnlab_agent.ike.proposals import dh_group
from vpnlab_agent.sa import ChildSA

if TYPE_CHECKING:
    from vpnlab_agent.ike.endpoint import IkeEndpoint

# Retransmission (RFC 7296 §2.1): first timeout, doubled after each try, at most this many sends.
RETRANSMIT_TIMEOUT = 0.5
RETRANSMIT_TRIES = 5
# Requests waiting behind the outstanding one; more than this means something is badly wrong.
MAX_QUEUED_REQUESTS = 16
# Bounded retries of IKE_SA_INIT after COOKIE / INVALID_KE_PAYLOAD answers.
MAX_INIT_RETRIES = 3
# A responder that never sees IKE_AUTH forgets the half-open SA after this long.
HALF_OPEN_TIMEOUT = 30.0
# How long a replaced IKE SA or child SA lingers waiting for the peer's DELETE.
REKEYED_GRACE = 30.0
# A failed or refused rekey is tried again after this plus up to RETRY_JITTER seconds, so two
# peers that collided do not collide again in lockstep.
RETRY_AFTER = 5.0
RETRY_JITTER = 5.0
# Rekey at this fraction of the lifetime; the responder waits longer, so the two sides of one SA
# rarely start a rekey at the same moment (collision handling of RFC 7296 §2.8.1 is not done).
REKEY_FRACTION_INITIATOR = 0.90
REKEY_FRACTION_RESPONDER = 0.96
NONCE_LEN = 32
# Queued requests an IKE rekey hands to the new IKE SA (the rest are rekeys and DPD, redone there).
_CARRIED_OVER = ("delete-child", "notify")
NATT_PORT = 4500
_ZERO_SPI = bytes(8)


class State(enum.Enum):
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request out
    HALF_OPEN = "half-open"  # responder: answered IKE_SA_INIT, waiting for IKE_AUTH
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a new IKE SA, waiting for (or sending) its DELETE
    DELETING = "deleting"  # our DELETE is out
    CLOSED = "closed"


class ProtocolFailure(Exception):
    """The peer's message is authentic but unacceptable; `notify` is the error to answer with."""

    def __init__(self, notify: int, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.notify = notify
        self.data = data


# --- bookkeeping records --------------------------------------------------------------------


@dataclass
class _Request:
    """One request of ours: built when queued, numbered and encoded when it goes out."""

    exchange: int
    payloads: list
    on_response: Callable[[Message, float], None]
    kind: str
    mid: int = -1
    data: bytes = b""
    tries: int = 0
    next_at: float = 0.0
    timeout: float = RETRANSMIT_TIMEOUT
    child: Child | None = None  # the child SA a queued rekey is for


@dataclass
class Child:
    sa: ChildSA
    proposal: Proposal  # as negotiated, our SPI; used to offer the same suite when rekeying
    created: float
    rekey_at: float
    expire_at: float | None = None  # set once replaced: the old SA goes away after a grace period
    rekeying: bool = False
    hard_at: float = float("inf")  # lifetime end: deleted then even if every rekey failed


@dataclass
class _RekeyCtx:
    """State of one CREATE_CHILD_SA we initiated (child or IKE rekey)."""

    nonce: bytes
    spi: bytes
    dh: Any | None
    old: Child | None = None
    retries: int = 0
    offered_ts: tuple[list[TrafficSelector], list[TrafficSelector]] = field(default_factory=lambda: ([], []))


# --- the session ----------------------------------------------------------------------------


class IkeSession:
    def __init__(
        self,
        ep: IkeEndpoint,
        *,
        initiator: bool,
        local_spi: bytes,
        remote: tuple[str, int],
        local_port: int,
        now: float,
        peer: PeerConfig | None = None,
    ) -> None:
        self.ep = ep
        self.initiator = initiator  # we are the original initiator of this IKE SA
        self.peer = peer
        self.spi_i = local_spi if initiator else _ZERO_SPI
        self.spi_r = _ZERO_SPI if initiator else local_spi
        self.remote = remote
        self.local_port = local_port
        self.state = State.INIT_SENT if initiator else State.HALF_OPEN
        self.created = now
        self.established_at: float | None = None
        self.last_recv = now
        self.rekey_at: float | None = None
        self.linger_until: float | None = None
        self.close_reason: str | None = None

        self.proposal: Proposal | None = None
        self.suite: Any = None
        self.keys: Any = None
        self.sk_in: Any = None
        self.sk_out: Any = None
        self.ni = b""
        self.nr = b""
        self.dh: Any = None
        self.init_req = b""  # the IKE_SA_INIT request bytes as sent (AUTH signs them)
        self.init_resp = b""
        self.init_retries = 0
        self.cookie: bytes | None = None
        # Responder: other versions of the peer's IKE_SA_INIT request that we answered with the
        # same response (the same SA, KE and Nonce, differing only in a COOKIE notify). The peer
        # signs whichever it sent last, so AUTH is checked against each (RFC 7296 §2.1, §2.6).
        self.init_req_variants: list[bytes] = []
        self._init_offer: tuple[Any, Any, Any] | None = None

        self.nat_local = False  # we are behind a NAT
        self.nat_remote = False  # the peer is (or, with force_encap, pretends to be)
        self.encap = False
        self.peer_vendor = False  # the peer announced our Vendor ID

        self.my_mid = 0
        self.pending: _Request | None = None
        self.queue: deque[_Request] = deque()
        self.peer_mid = 0
        self.last_resp: tuple[int, bytes] | None = None

        self.children: dict[int, Child] = {}
        # Inbound SPIs we offered for a child not installed yet: released if it never comes, so
        # the endpoint's set of SPIs in use does not grow with every failed negotiation.
        self._offered_spis: set[bytes] = set()
        self.init_key: tuple[bytes, tuple[str, int]] | None = None  # responder: (SPIi, addr) of IKE_SA_INIT
        self._auth_ctx = _RekeyCtx(b"", b"", None)  # initiator: what IKE_AUTH offered for the first child
        self._last_raw = b""  # bytes of the response being handled (IKE_SA_INIT's are signed by AUTH)
        self._close_after_response: tuple[str, bool] | None = None  # (reason, quiet) once answered
        self.successor: IkeSession | None = None  # the IKE SA that replaced this one
        self.hard_at: float | None = None  # end of the IKE SA's lifetime if rekeying keeps failing

    # --- naming ---------------------------------------------------------------------------

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def peer_name(self) -> str:
        return self.peer.name if self.peer else f"{self.remote[0]}:{self.remote[1]}"

    @property
    def established(self) -> bool:
        return self.state == State.ESTABLISHED

    def _retry_time(self, now: float) -> float:
        return now + RETRY_AFTER + RETRY_JITTER * self.ep.rng(1)[0] / 255

    def _owner(self) -> IkeSession:
        """Where children live now: a rekeyed-away IKE SA hands new ones to its successor."""
        return self.successor if self.state == State.REKEYED and self.successor is not None else self

    def _lifetime_fraction(self) -> float:
        return REKEY_FRACTION_INITIATOR if self.initiator else REKEY_FRACTION_RESPONDER

    # --- output helpers -------------------------------------------------------------------

    def _msg(self, exchange: int, mid: int, response: bool, payloads: list) -> Message:
        return Message(self.spi_i, self.spi_r, exchange, mid, self.initiator, response, payloads)

    def _send_raw(self, data: bytes, addr: tuple[str, int] | None = None, local_port: int | None = None) -> None:
        self.ep._send(data, addr or self.remote, self.local_port if local_port is None else local_port)

    def _queue(self, exchange: int, payloads: list, on_response: Callable[[Message, float], None],
               kind: str, now: float, child: Child | None = None) -> bool:
        if len(self.queue) >= MAX_QUEUED_REQUESTS:
            return False
        self.queue.append(_Request(exchange, payloads, on_response, kind, child=child))
        self._pump(now)
        return True

    def _pump(self, now: float) -> None:
        """Send the next queued request if none is outstanding (window size 1)."""
        if self.pending is not None or not self.queue or self.state == State.CLOSED:
            return
        req = self.queue.popleft()
        req.mid = self.my_mid
        self.my_mid += 1
        req.data = encode(self._msg(req.exchange, req.mid, False, req.payloads), self.sk_out)
        self._transmit(req, now)

    def _transmit(self, req: _Request, now: float) -> None:
        req.tries = 1
        req.timeout = RETRANSMIT_TIMEOUT
        req.next_at = now + req.timeout
        self.pending = req
        self._send_raw(req.data)

    def _has_request(self, kind: str) -> bool:
        return (self.pending is not None and self.pending.kind == kind) or any(r.kind == kind for r in self.queue)

    # --- initiator: IKE_SA_INIT -----------------------------------------------------------

    def start(self, now: float) -> None:
        ours = self.ep.ike_proposals
        self.ni = self.ep.rng(NONCE_LEN)
        group = dh_group(ours[0])
        self.dh = crypto.DhKeyPair.generate(group, self.ep.rng)
        self._send_init(now)

    def _send_init(self, now: float) -> None:
        payloads: list = []
        if self.cookie is not None:
            payloads.append(Notify(ProtocolId.NONE, b"", NotifyType.COOKIE, self.cookie))
        payloads += [
            SA(with_spi(self.ep.ike_proposals, b"")),
            KE(self.dh.group, self.dh.public_bytes),
            Nonce(self.ni),
            *self._nat_notifies(self.spi_i, _ZERO_SPI),
            VendorId(self.ep.vendor_id),
        ]
        self.init_req = encode(self._msg(ExchangeType.IKE_SA_INIT, 0, False, payloads))
        self.my_mid = 1
        self.state = State.INIT_SENT
        self._transmit(_Request(ExchangeType.IKE_SA_INIT, payloads, self._on_init_response, "init",
                                mid=0, data=self.init_req), now)

    def _nat_notifies(self, spi_i: bytes, spi_r: bytes) -> list[Notify]:
        if self.ep.force_encap:
            # Like strongSwan's encap=yes: a source hash that cannot match makes both ends believe
            # we are behind a NAT, so IKE floats to 4500 and ESP is UDP-encapsulated.
            src = self.ep.rng(20)
        else:
            src = crypto.nat_hash(spi_i, spi_r, self.ep.local_addr, self.local_port)
        dst = crypto.nat_hash(spi_i, spi_r, self.remote[0], self.remote[1])
        return [
            Notify(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_SOURCE_IP, src),
            Notify(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
        ]

    def _check_nat(self, msg: Message, addr: tuple[str, int], local_port: int) -> None:
        srcs = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
        dsts = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
        if srcs:
            want = crypto.nat_hash(msg.spi_i, msg.spi_r, addr[0], addr[1])
            self.nat_remote = not any(hmac.compare_digest(want, s) for s in srcs)
        if dsts:
            want = crypto.nat_hash(msg.spi_i, msg.spi_r, self.ep.local_addr, local_port)
            self.nat_local = not any(hmac.compare_digest(want, d) for d in dsts)
        self.encap = self.nat_local or self.nat_remote or self.ep.force_encap

    def _on_init_response(self, msg: Message, now: float) -> None:
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and self.init_retries < MAX_INIT_RETRIES:
            self.init_retries += 1
            self.cookie = cookie[0].data
            self._send_init(now)
            return
        bad_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if bad_ke and self.init_retries < MAX_INIT_RETRIES and len(bad_ke[0].data) == 2:
            group = int.from_bytes(bad_ke[0].data, "big")
            offered = {dh_group(p) for p in self.ep.ike_proposals}
            if group in offered and group != self.dh.group:
                self.init_retries += 1
                self.dh = crypto.DhKeyPair.generate(group, self.ep.rng)
                self._send_init(now)
                return
        errors = [n for n in msg.find_all(Notify) if is_error_notify(n.notify_type)]
        if errors:
            self._close(now, f"IKE_SA_INIT refused: {_notify_name(errors[0].notify_type)}")
            return
        sa, ke, nonce = msg.find(SA), msg.find(KE), msg.find(Nonce)
        if sa is None or ke is None or nonce is None or len(sa.proposals) != 1:
            self._close(now, "IKE_SA_INIT response lacks SA, KE or Nonce")
            return
        chosen = sa.proposals[0]
        if proposals.select([chosen], self.ep.ike_proposals) is None:
            self._close(now, "IKE_SA_INIT response chose a proposal we did not offer")
            return
        if ke.group != self.dh.group or dh_group(chosen) != self.dh.group:
            self._close(now, "IKE_SA_INIT response KE group does not match")
            return
        if not 16 <= len(nonce.data) <= 256 or msg.spi_r == _ZERO_SPI:
            self._close(now, "IKE_SA_INIT response has a bad nonce or SPI")
            return
        try:
            shared = self.dh.shared_secret(ke.data)
        except ValueError as e:
            self._close(now, f"bad peer DH value: {e}")
            return
        self.spi_r = msg.spi_r
        self.nr = nonce.data
        self.init_resp = self._last_raw
        self._set_keys(chosen, shared)
        self.peer_vendor = any(v.data == self.ep.vendor_id for v in msg.find_all(VendorId))
        self._check_nat(msg, self.remote, self.local_port)
        if self.encap and self.local_port != NATT_PORT:
            # RFC 7296 §2.23: once a NAT is detected, IKE moves to 4500 from IKE_AUTH on.
            self.remote = (self.remote[0], NATT_PORT)
            self.local_port = NATT_PORT
        self._send_auth(now)

    def _set_keys(self, chosen: Proposal, shared: bytes) -> None:
        self.proposal = chosen
        self.suite = proposals.suite_from_proposal(chosen)
        self.keys = crypto.derive_ike_keys(self.suite, self.ni, self.nr, shared, self.spi_i, self.spi_r)
        self._set_ciphers()

    def _set_ciphers(self) -> None:
        k = self.keys
        ini = crypto.SkCipher(self.suite, k.sk_ei, k.sk_ai)
        res = crypto.SkCipher(self.suite, k.sk_er, k.sk_ar)
        self.sk_out, self.sk_in = (ini, res) if self.initiator else (res, ini)

    # --- initiator: IKE_AUTH --------------------------------------------------------------

    def _auth_data(self, signer_is_initiator: bool, id_payload: IDi | IDr, init_req: bytes | None = None) -> bytes:
        """PSK AUTH (RFC 7296 §2.15): the IKE SA initiator signs its IKE_SA_INIT request, Nr and
        prf(SK_pi, IDi body); the responder signs its IKE_SA_INIT response, Ni and prf(SK_pr, IDr body)."""
        k, prf = self.keys, self.suite.prf
        if signer_is_initiator:
            octets = crypto.signed_octets(init_req or self.init_req, self.nr, prf, k.sk_pi, payload_body(id_payload))
        else:
            octets = crypto.signed_octets(self.init_resp, self.ni, prf, k.sk_pr, payload_body(id_payload))
        return crypto.psk_auth(prf, self.ep.psk, octets)

    def _send_auth(self, now: float) -> None:
        assert self.peer is not None
        id_type, id_data = identity(self.ep.config.local_id)
        idi = IDi(id_type, id_data)
        spi = self._offer_spi()
        ts_i, ts_r = selectors_for(self.peer.local_ts), selectors_for(self.peer.remote_ts)
        self._auth_ctx = _RekeyCtx(nonce=b"", spi=spi, dh=None, offered_ts=(ts_i, ts_r))
        payloads: list = [idi]
        if not self.ep.has_other_sa(self):
            payloads.append(Notify(ProtocolId.NONE, b"", NotifyType.INITIAL_CONTACT))
        payloads += [
            Auth(AuthMethod.PSK, self._auth_data(self.initiator, idi)),
            SA(with_spi([without_dh(p) for p in self.ep.esp_proposals], spi)),
            TSi(ts_i),
            TSr(ts_r),
            VendorId(self.ep.vendor_id),
        ]
        self.state = State.AUTH_SENT
        self.pending = None
        self._queue(ExchangeType.IKE_AUTH, payloads, self._on_auth_response, "auth", now)

    def _on_auth_response(self, msg: Message, now: float) -> None:
        assert self.peer is not None
        if msg.notifies(NotifyType.AUTHENTICATION_FAILED):
            self._auth_failed(now, self.peer.name, "peer refused our authentication (AUTHENTICATION_FAILED): "
                              "PSK or identity mismatch")
            return
        idr, auth = msg.find(IDr), msg.find(Auth)
        if idr is None or auth is None:
            errors = [n for n in msg.find_all(Notify) if is_error_notify(n.notify_type)]
            why = _notify_name(errors[0].notify_type) if errors else "no IDr/AUTH"
            self._close(now, f"IKE_AUTH failed: {why}")
            return
        if (idr.id_type, idr.data) != identity(self.peer.remote_id):
            self._auth_failed(now, self.peer.name, f"peer identity {identity_text(idr.id_type, idr.data)!r} "
                              f"is not the configured {self.peer.remote_id!r}")
            return
        if auth.method != AuthMethod.PSK or not hmac.compare_digest(auth.data, self._auth_data(not self.initiator, idr)):
            self._auth_failed(now, self.peer.name, "peer's AUTH payload does not verify: PSK mismatch")
            return
        self.peer_vendor = self.peer_vendor or any(v.data == self.ep.vendor_id for v in msg.find_all(VendorId))
        self._establish(now)
        ctx = self._auth_ctx
        try:
            self._accept_child_response(msg, ctx, None, now, self.ni, self.nr, None)
        except ProtocolFailure as e:
            self._withdraw_spi(ctx.spi)
            self.ep.log(f"{self.peer_name}: IKE SA up without child SA: {e}")

    def _accept_child_response(self, msg: Message, ctx: _RekeyCtx, old: Child | None, now: float,
                               ni: bytes, nr: bytes, shared: bytes | None) -> Child:
        """Check the responder's SA/TS for a child we asked for, and install it (initiator side)."""
        assert self.peer is not None
        errors = [n for n in msg.find_all(Notify) if is_error_notify(n.notify_type)]
        if errors:
            raise ProtocolFailure(errors[0].notify_type, f"child SA refused: {_notify_name(errors[0].notify_type)}")
        sa, tsi, tsr = msg.find(SA), msg.find(TSi), msg.find(TSr)
        if sa is None or tsi is None or tsr is None or len(sa.proposals) != 1:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child SA response lacks SA/TSi/TSr")
        chosen = sa.proposals[0]
        offered = [p if shared is not None else without_dh(p) for p in self.ep.esp_proposals]
        if chosen.protocol != ProtocolId.ESP or len(chosen.spi) != 4 or proposals.select([chosen], offered) is None:
            raise ProtocolFailure(NotifyType.NO_PROPOSAL_CHOSEN, "responder chose an ESP proposal we did not offer")
        if not (within(tsi.selectors, ctx.offered_ts[0]) and within(tsr.selectors, ctx.offered_ts[1])):
            raise ProtocolFailure(NotifyType.TS_UNACCEPTABLE, "responder widened the traffic selectors")
        suite = proposals.suite_from_proposal(chosen)
        keys = crypto.derive_child_keys(suite, self.suite.prf, self.keys.sk_d, ni, nr, shared)
        mine = dataclasses.replace(chosen, spi=ctx.spi)
        return self._add_child(mine, suite, keys, True, spi_int(ctx.spi), spi_int(chosen.spi),
                               cidrs(tsi.selectors), cidrs(tsr.selectors), old, now)

    # --- responder: IKE_SA_INIT (called by the endpoint, which did cookies and dispatch) ----

    def respond_init(self, msg: Message, raw: bytes, addr: tuple[str, int], local_port: int,
                     chosen: Proposal, now: float) -> None:
        """Answer a valid IKE_SA_INIT request; the endpoint already checked SA and KE group."""
        ke, nonce = msg.find(KE), msg.find(Nonce)
        assert ke is not None and nonce is not None
        self.spi_i = msg.spi_i
        self.init_req = raw
        self._init_offer = _offer(msg)
        self.ni = nonce.data
        self.nr = self.ep.rng(NONCE_LEN)
        self.dh = crypto.DhKeyPair.generate(ke.group, self.ep.rng)
        shared = self.dh.shared_secret(ke.data)  # ValueError handled by the endpoint
        self.peer_vendor = any(v.data == self.ep.vendor_id for v in msg.find_all(VendorId))
        self._check_nat(msg, addr, local_port)
        mine = dataclasses.replace(chosen, spi=b"")
        self._set_keys(mine, shared)
        payloads = [
            SA([mine]),
            KE(self.dh.group, self.dh.public_bytes),
            Nonce(self.nr),
            *self._nat_notifies(self.spi_i, self.spi_r),
            VendorId(self.ep.vendor_id),
        ]
        self.init_resp = encode(self._msg(ExchangeType.IKE_SA_INIT, 0, True, payloads))
        self.peer_mid = 1
        self.last_resp = (0, self.init_resp)
        self._send_raw(self.init_resp, addr, local_port)

    # --- responder: IKE_AUTH --------------------------------------------------------------

    def _on_auth_request(self, msg: Message, addr: tuple[str, int], now: float) -> list | None:
        idi, auth = msg.find(IDi), msg.find(Auth)
        if idi is None or auth is None:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "IKE_AUTH without IDi or AUTH")
        claimed = identity_text(idi.id_type, idi.data)
        peer = self.ep.peer_by_identity(idi.id_type, idi.data)
        if peer is None:
            self._auth_failed(now, claimed, f"identity {claimed!r} matches no configured peer", addr)
            return [Notify(ProtocolId.NONE, b"", NotifyType.AUTHENTICATION_FAILED)]
        if auth.method != AuthMethod.PSK or not any(
                hmac.compare_digest(auth.data, self._auth_data(True, idi, m))
                for m in (self.init_req, *self.init_req_variants)):
            self._auth_failed(now, peer.name, f"AUTH from {claimed!r} does not verify: PSK mismatch", addr)
            return [Notify(ProtocolId.NONE, b"", NotifyType.AUTHENTICATION_FAILED)]
        self.peer = peer
        self.peer_vendor = self.peer_vendor or any(v.data == self.ep.vendor_id for v in msg.find_all(VendorId))
        id_type, id_data = identity(self.ep.config.local_id)
        idr = IDr(id_type, id_data)
        out: list = [idr, Auth(AuthMethod.PSK, self._auth_data(self.initiator, idr))]
        if msg.notifies(NotifyType.INITIAL_CONTACT):
            self.ep.initial_contact(self, now)
        self._establish(now)
        try:
            out += self._answer_child(msg, None, now, self.ni, self.nr, None, in_auth=True)
        except ProtocolFailure as e:
            self.ep.log(f"{peer.name}: IKE SA up without child SA: {e}")
            out.append(Notify(ProtocolId.NONE, b"", e.notify, e.data))
        out.append(VendorId(self.ep.vendor_id))
        return out

    def _answer_child(self, msg: Message, old: Child | None, now: float, ni: bytes, nr: bytes,
                      shared: bytes | None, *, in_auth: bool = False) -> list:
        """Responder: select ESP proposal, narrow selectors, create the child; → SA/TSi/TSr payloads."""
        assert self.peer is not None
        sa, tsi, tsr = msg.find(SA), msg.find(TSi), msg.find(TSr)
        if sa is None or tsi is None or tsr is None:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child SA request lacks SA/TSi/TSr")
        esp = [p for p in sa.proposals if p.protocol == ProtocolId.ESP and len(p.spi) == 4]
        if shared is not None:  # PFS: the KE matched the group of the proposal _answer_ke chose
            ours, offered = self.ep.esp_proposals, esp
        elif in_auth:  # the first child's keys come from the IKE SA's DH
            ours, offered = [without_dh(p) for p in self.ep.esp_proposals], [without_dh(p) for p in esp]
        else:  # CREATE_CHILD_SA without a DH exchange: only our proposals that ask for none
            ours = [p for p in self.ep.esp_proposals if dh_group(p) is None]
            offered = [without_dh(p) for p in esp]
        chosen = proposals.select(offered, ours)
        if chosen is None:
            raise ProtocolFailure(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")
        # TSi is the initiator's side: the peer's networks, i.e. our remote_ts.
        ts_i = narrow(tsi.selectors, self.peer.remote_ts or ("0.0.0.0/0",))
        ts_r = narrow(tsr.selectors, self.peer.local_ts or ("0.0.0.0/0",))
        if not ts_i or not ts_r:
            raise ProtocolFailure(NotifyType.TS_UNACCEPTABLE, "traffic selectors do not match our configuration")
        peer_spi = chosen.spi  # select() keeps the offered SPI (proposal numbers need not be unique)
        spi = self.ep.new_child_spi()
        mine = dataclasses.replace(chosen, spi=spi)
        suite = proposals.suite_from_proposal(mine)
        keys = crypto.derive_child_keys(suite, self.suite.prf, self.keys.sk_d, ni, nr, shared)
        self._add_child(mine, suite, keys, False, spi_int(spi), spi_int(peer_spi),
                        cidrs(ts_r), cidrs(ts_i), old, now)
        return [SA([mine]), TSi(ts_i), TSr(ts_r)]

    # --- children -------------------------------------------------------------------------

    def _add_child(self, prop: Proposal, suite: Any, keys: Any, exch_initiator: bool, spi_in: int,
                   spi_out: int, local_ts: tuple[str, ...], remote_ts: tuple[str, ...],
                   old: Child | None, now: float) -> Child:
        assert self.peer is not None
        # KEYMAT order (RFC 7296 §2.17): keys for initiator→responder traffic first, where the
        # initiator is the one who started this exchange.
        if exch_initiator:
            enc_out, int_out, enc_in, int_in = keys.enc_i, keys.integ_i, keys.enc_r, keys.integ_r
        else:
            enc_out, int_out, enc_in, int_in = keys.enc_r, keys.integ_r, keys.enc_i, keys.integ_i
        encap = self.encap
        sa = ChildSA(
            name=self.peer.name,
            reqid=old.sa.reqid if old else self.ep.reqid(self.peer.name, local_ts, remote_ts),
            spi_in=spi_in,
            spi_out=spi_out,
            algorithm=suite.algorithm(),
            enc_key_in=enc_in,
            enc_key_out=enc_out,
            integ_key_in=int_in,
            integ_key_out=int_out,
            local_addr=self.ep.local_addr,
            remote_addr=self.remote[0],
            local_port=NATT_PORT if encap else 0,
            remote_port=self.remote[1] if encap else 0,
            local_ts=local_ts,
            remote_ts=remote_ts,
        )
        self._offered_spis.discard(spi_in.to_bytes(4, "big"))
        lifetime = self.ep.config.child_lifetime_s
        child = Child(sa, prop, now, now + lifetime * self._lifetime_fraction(), hard_at=now + lifetime)
        # A child rekey answered after our IKE SA was itself rekeyed belongs to the new IKE SA.
        self._owner().children[spi_in] = child
        if old is not None:
            old.rekeying = False
            old.expire_at = now + REKEYED_GRACE
        self.ep._emit(ChildSAUp(sa, old.sa.spi_in if old else None))
        return child

    def _remove_child(self, child: Child) -> None:
        if self.children.pop(child.sa.spi_in, None) is not None:
            self.ep.release_child_spi(child.sa.spi_in)
            self.ep._emit(ChildSADeleted(child.sa.name, child.sa.spi_in, child.sa.reqid))

    def _offer_spi(self) -> bytes:
        spi = self.ep.new_child_spi()
        self._offered_spis.add(spi)
        return spi

    def _withdraw_spi(self, spi: bytes) -> None:
        """The child we offered this inbound SPI for will not exist."""
        if spi in self._offered_spis:
            self._offered_spis.discard(spi)
            self.ep.release_child_spi(spi_int(spi))

    def _child_by_out(self, spi: bytes) -> Child | None:
        want = spi_int(spi)
        return next((c for c in self.children.values() if c.sa.spi_out == want), None)

    # --- establishment / close ------------------------------------------------------------

    def _establish(self, now: float) -> None:
        assert self.peer is not None and self.proposal is not None
        self.state = State.ESTABLISHED
        self.established_at = now
        self.rekey_at = now + self.ep.config.ike_lifetime_s * self._lifetime_fraction()
        self.hard_at = now + self.ep.config.ike_lifetime_s
        self.ep._emit(IkeSAUp(self.peer.name, self.spi_i, self.spi_r, self.initiator,
                              describe(self.proposal), self.remote))
        self.ep._session_up(self)

    def _auth_failed(self, now: float, who: str, reason: str, addr: tuple[str, int] | None = None) -> None:
        self.ep._emit(AuthFailed(who, addr or self.remote, reason))
        self.ep.log(f"{who}: authentication failed: {reason}")
        self._close(now, f"authentication failed: {reason}", quiet=not self.initiator)

    def _close(self, now: float, reason: str | None, *, quiet: bool = False) -> None:
        """Forget this IKE SA. Children are reported deleted; IkeSADown unless quiet (a rekeyed-away
        SA, or a responder SA that never belonged to a known peer)."""
        if self.state == State.CLOSED:
            return
        was = self.state
        self.state = State.CLOSED
        self.close_reason = reason
        for child in list(self.children.values()):
            self._remove_child(child)
        for spi in list(self._offered_spis):
            self._withdraw_spi(spi)
        self.pending = None
        self.queue.clear()
        if not quiet and was != State.REKEYED and (self.peer is not None and (self.initiator or was != State.HALF_OPEN)):
            self.ep._emit(IkeSADown(self.peer.name, reason or "closed"))
        self.ep._closed(self)

    def abandon(self, now: float, reason: str) -> None:
        """Forget a half-open responder SA without a word to the peer."""
        if self.state == State.HALF_OPEN:
            self._close(now, reason, quiet=True)

    # --- receiving ------------------------------------------------------------------------

    def receive(self, data: bytes, hdr: Header, addr: tuple[str, int], local_port: int, now: float) -> None:
        """One datagram addressed to this IKE SA. Never raises on peer input."""
        if self.state == State.CLOSED:
            return
        if hdr.exchange == ExchangeType.IKE_SA_INIT:
            self._receive_init(data, hdr, addr, local_port, now)
            return
        if self.sk_in is None:
            return
        if hdr.response:
            if self.pending is None or hdr.message_id != self.pending.mid:
                return  # late duplicate or a response to something we never asked
        elif hdr.message_id == self.peer_mid - 1 and self.last_resp and self.last_resp[0] == hdr.message_id:
            # A retransmitted request: resend the response we already gave (RFC 7296 §2.1),
            # but only if it is authentic.
            try:
                decode(data, self.sk_in)
            except IntegrityError:
                return
            except ParseError as e:
                if not e.authentic:
                    return
            self._send_raw(self.last_resp[1], addr, local_port)
            return
        elif hdr.message_id != self.peer_mid:
            return  # outside the window of one
        try:
            msg = decode(data, self.sk_in)
        except IntegrityError:
            return
        except ParseError as e:
            if e.authentic and not hdr.response and e.notify_type != NotifyType.INVALID_SYNTAX:
                # Authentic but with an unknown critical payload: answer with the error (§2.5).
                # Never for a fault outside the SK payload: a forger would move our window.
                self._respond(hdr.exchange, hdr.message_id,
                              [Notify(ProtocolId.NONE, b"", e.notify_type, e.data)], addr, local_port)
            return
        if msg.initiator == self.initiator:
            return  # reflected message: the I flag says it came from our own side
        self.last_recv = now
        if local_port == NATT_PORT and (addr != self.remote or self.local_port != NATT_PORT):
            # The peer floated to 4500 or its NAT mapping changed (RFC 7296 §2.23).
            self.remote, self.local_port, self.encap = addr, NATT_PORT, True
        handler = _TRANSITIONS.get((self.state, hdr.exchange, hdr.response))
        if handler is None:
            return
        if hdr.response:
            self._last_raw = data
            handler(self, msg, addr, now)
            return
        try:
            out = handler(self, msg, addr, now)
        except ProtocolFailure as e:
            out = [Notify(ProtocolId.NONE, b"", e.notify, e.data)]
            self.ep.log(f"{self.peer_name}: refused {ExchangeType(hdr.exchange).name}: {e}")
        except Exception as e:  # noqa: BLE001 - peer input must never take the agent down
            self.ep.internal_errors += 1
            self.ep.log(f"{self.peer_name}: internal error handling request: {type(e).__name__}: {e}")
            out = [Notify(ProtocolId.NONE, b"", NotifyType.TEMPORARY_FAILURE)]
        if out is not None and self.sk_out is not None:
            self._respond(hdr.exchange, hdr.message_id, out, addr, local_port)
        self._after_response(now)

    def _respond(self, exchange: int, mid: int, payloads: list, addr: tuple[str, int], local_port: int) -> None:
        data = encode(self._msg(exchange, mid, True, payloads), self.sk_out)
        self.last_resp = (mid, data)
        self.peer_mid = mid + 1
        self._send_raw(data, addr, local_port)

    def _after_response(self, now: float) -> None:
        if self._close_after_response is not None:
            reason, quiet = self._close_after_response
            self._close_after_response = None
            self._close(now, reason, quiet=quiet)
        else:
            self._pump(now)
        self._pump_successor(now)

    def _pump_successor(self, now: float) -> None:
        """After an IKE rekey, requests carried over to the new IKE SA go out once the exchange
        that created it is complete (as responder: our answer is sent)."""
        if self.successor is not None:
            self.successor._pump(now)

    def _receive_init(self, data: bytes, hdr: Header, addr: tuple[str, int], local_port: int, now: float) -> None:
        if not hdr.response:
            # Another IKE_SA_INIT request with this SPIi from this address (the endpoint routed it here).
            if self.state == State.HALF_OPEN:
                self._repeat_init_response(data, addr, local_port)
            return
        if self.state != State.INIT_SENT or self.pending is None or hdr.message_id != 0:
            return
        try:
            msg = decode(data)
        except (ParseError, IntegrityError):
            return
        if msg.initiator or self._stale_init_answer(msg):
            return
        handler = _TRANSITIONS.get((self.state, hdr.exchange, hdr.response))
        if handler is None:
            return
        self.last_recv = now
        self._last_raw = data
        handler(self, msg, addr, now)

    def _repeat_init_response(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        """A retransmitted request gets the same answer (RFC 7296 §2.1). So does a later version
        of it that offers the same SA, KE and Nonce and differs only in a COOKIE: under load a
        retransmission of the cookie-less request can reach us after we stopped asking for
        cookies, and we answered it; the peer then signs its cookie version in AUTH."""
        if data != self.init_req and data not in self.init_req_variants:
            try:
                msg = decode(data)
            except (ParseError, IntegrityError):
                return
            if (not msg.initiator or _offer(msg) != self._init_offer
                    or len(self.init_req_variants) >= MAX_INIT_RETRIES):
                return
            self.init_req_variants.append(data)
        self._send_raw(self.init_resp, addr, local_port)

    def _stale_init_answer(self, msg: Message) -> bool:
        """A late answer to an earlier version of our IKE_SA_INIT request: a COOKIE we already
        carry, or INVALID_KE_PAYLOAD naming the group we already switched to. Acting on it would
        restart (or, past the retry bound, close) a negotiation that is going fine."""
        cookie = msg.notifies(NotifyType.COOKIE)
        if cookie and self.cookie is not None and cookie[0].data == self.cookie:
            return True
        bad_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        return bool(bad_ke) and self.init_retries > 0 and bad_ke[0].data == self.dh.group.to_bytes(2, "big")

    # --- responder: CREATE_CHILD_SA -------------------------------------------------------

    def _on_create_child_request(self, msg: Message, addr: tuple[str, int], now: float) -> list | None:
        sa, nonce = msg.find(SA), msg.find(Nonce)
        if sa is None or nonce is None or not 16 <= len(nonce.data) <= 256:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA without SA or Nonce")
        if self.pending is not None and self.pending.kind in ("rekey-ike", "delete-ike"):
            raise ProtocolFailure(NotifyType.TEMPORARY_FAILURE, "IKE SA is being rekeyed or deleted")
        if any(p.protocol == ProtocolId.IKE for p in sa.proposals):
            return self._answer_ike_rekey(msg, sa, nonce, now)
        rekey = [n for n in msg.notifies(NotifyType.REKEY_SA) if n.protocol == ProtocolId.ESP]
        old = None
        if rekey:
            old = self._child_by_out(rekey[0].spi)
            if old is None:
                raise ProtocolFailure(NotifyType.CHILD_SA_NOT_FOUND, "rekey of an unknown child SA")
            if old.rekeying:
                raise ProtocolFailure(NotifyType.TEMPORARY_FAILURE, "child SA rekey collision")
        nr = self.ep.rng(NONCE_LEN)
        shared, ke_out = self._answer_ke(msg, sa)
        out = self._answer_child(msg, old, now, nonce.data, nr, shared)
        sa_out, tsi_out, tsr_out = out
        payloads: list = [sa_out, Nonce(nr)]
        if ke_out is not None:
            payloads.append(ke_out)
        return payloads + [tsi_out, tsr_out]

    def _answer_ke(self, msg: Message, sa: SA) -> tuple[bytes | None, KE | None]:
        """PFS for a child rekey: if our proposals want DH, the KE must be of the chosen group."""
        ours = self.ep.esp_proposals
        esp = [p for p in sa.proposals if p.protocol == ProtocolId.ESP]
        chosen = proposals.select(esp, ours)
        group = dh_group(chosen) if chosen else None
        if group is None:
            return None, None
        ke = msg.find(KE)
        if ke is None or ke.group != group:
            raise ProtocolFailure(NotifyType.INVALID_KE_PAYLOAD, "KE of the wrong group", group.to_bytes(2, "big"))
        dh = crypto.DhKeyPair.generate(group, self.ep.rng)
        try:
            shared = dh.shared_secret(ke.data)
        except ValueError as e:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, f"bad KE value: {e}") from e
        return shared, KE(group, dh.public_bytes)

    def _answer_ike_rekey(self, msg: Message, sa: SA, nonce: Nonce, now: float) -> list:
        offered = [p for p in sa.proposals if p.protocol == ProtocolId.IKE and len(p.spi) == 8]
        chosen = proposals.select(offered, self.ep.ike_proposals)
        if chosen is None:
            raise ProtocolFailure(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal for rekey")
        group = dh_group(chosen)
        ke = msg.find(KE)
        if ke is None or ke.group != group:
            raise ProtocolFailure(NotifyType.INVALID_KE_PAYLOAD, "KE of the wrong group",
                                  (group or 0).to_bytes(2, "big"))
        peer_spi = chosen.spi
        dh = crypto.DhKeyPair.generate(group, self.ep.rng)
        try:
            shared = dh.shared_secret(ke.data)
        except ValueError as e:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, f"bad KE value: {e}") from e
        spi = self.ep.new_ike_spi()
        mine = dataclasses.replace(chosen, spi=spi)
        nr = self.ep.rng(NONCE_LEN)
        self._replace_by(mine, peer_spi, spi, nonce.data, nr, shared, we_initiated=False, now=now)
        return [SA([mine]), Nonce(nr), KE(group, dh.public_bytes)]

    def _replace_by(self, prop: Proposal, spi_i_or_peer: bytes, our_spi: bytes, ni: bytes, nr: bytes,
                    shared: bytes, *, we_initiated: bool, now: float) -> IkeSession:
        """IKE rekey (RFC 7296 §2.18): a new session takes over peer, addresses and children."""
        spi_i, spi_r = (our_spi, spi_i_or_peer) if we_initiated else (spi_i_or_peer, our_spi)
        new = IkeSession(self.ep, initiator=we_initiated, local_spi=our_spi, remote=self.remote,
                         local_port=self.local_port, now=now, peer=self.peer)
        new.spi_i, new.spi_r = spi_i, spi_r
        new.proposal = dataclasses.replace(prop, spi=b"")
        new.suite = proposals.suite_from_proposal(prop)
        new.keys = crypto.derive_ike_keys(new.suite, ni, nr, shared, spi_i, spi_r, old_sk_d=self.keys.sk_d,
                                         old_prf=self.suite.prf)
        new.ni, new.nr = ni, nr
        new._set_ciphers()
        new.nat_local, new.nat_remote, new.encap = self.nat_local, self.nat_remote, self.encap
        new.peer_vendor = self.peer_vendor
        new.children, self.children = self.children, {}
        new.state = State.ESTABLISHED
        new.established_at = now
        new.rekey_at = now + self.ep.config.ike_lifetime_s * new._lifetime_fraction()
        new.hard_at = now + self.ep.config.ike_lifetime_s
        self.state = State.REKEYED
        self.successor = new
        self.linger_until = now + REKEYED_GRACE
        for req in self.queue:
            if req.child is not None:  # child rekeys not sent yet: the new IKE SA does them right away
                req.child.rekeying = False
                req.child.rekey_at = now
            elif req.kind in _CARRIED_OVER:  # DELETEs of children and notifies still matter
                new.queue.append(_Request(req.exchange, req.payloads, req.on_response, req.kind))
        self.queue.clear()
        self.ep._adopt(new)
        assert self.peer is not None and new.proposal is not None
        self.ep._emit(IkeSAUp(self.peer.name, spi_i, spi_r, we_initiated, describe(new.proposal),
                              self.remote, rekey=True))
        return new

    # --- responder: INFORMATIONAL ---------------------------------------------------------

    def _on_informational_request(self, msg: Message, addr: tuple[str, int], now: float) -> list | None:
        out: list = []
        for d in msg.find_all(Delete):
            if d.protocol == ProtocolId.IKE:
                quiet = self.state == State.REKEYED
                self._close_after_response = ("deleted by peer", quiet)
                return []
            if d.protocol == ProtocolId.ESP:
                ours = []
                for spi in d.spis:
                    child = self._child_by_out(spi)
                    if child is not None:
                        ours.append(child.sa.spi_in.to_bytes(4, "big"))
                        self._remove_child(child)
                if ours:
                    out.append(Delete(ProtocolId.ESP, ours))
        for n in msg.find_all(Notify):
            if n.notify_type >= NotifyType.VPNLAB_PRIVATE_BASE and self.peer_vendor and self.peer:
                self.ep._emit(NotifyReceived(self.peer.name, n.notify_type, n.data))
        return out

    def _refuse_temporarily(self, msg: Message, addr: tuple[str, int], now: float) -> list:
        return [Notify(ProtocolId.NONE, b"", NotifyType.TEMPORARY_FAILURE)]

    def _to_pending(self, msg: Message, addr: tuple[str, int], now: float) -> None:
        """A response (already matched to our outstanding request's message ID) goes to that
        request's own callback; then the next queued request may go out."""
        req = self.pending
        assert req is not None
        self.pending = None
        req.on_response(msg, now)
        self._pump(now)
        self._pump_successor(now)

    def _on_rekey_response_while_deleting(self, msg: Message, addr: tuple[str, int], now: float) -> None:
        """A rekey answered after delete(). A child rekey is moot: deleting the IKE SA takes the
        peer's new child with it. An IKE rekey is completed so that the new IKE SA is deleted too;
        otherwise the peer would keep it, with all the children, until its DPD gave up."""
        req = self.pending
        assert req is not None
        if req.kind != "rekey-ike":
            self.pending = None
            self._pump(now)
            return
        reason = self.close_reason or "terminated"
        self._to_pending(msg, addr, now)
        if self.successor is not None:
            self.successor.delete(now, reason)

    # --- locally started exchanges (endpoint API) ------------------------------------------

    def rekey_child(self, child: Child, now: float) -> bool:
        if not self.established or child.rekeying or child.expire_at is not None:
            return False
        assert self.peer is not None
        child.rekeying = True
        spi = self._offer_spi()
        nonce = self.ep.rng(NONCE_LEN)
        group = dh_group(self.ep.esp_proposals[0])
        dh = crypto.DhKeyPair.generate(group, self.ep.rng) if group else None
        ts_i = [ts_from_cidr(c) for c in child.sa.local_ts]
        ts_r = [ts_from_cidr(c) for c in child.sa.remote_ts]
        ctx = _RekeyCtx(nonce, spi, dh, child, offered_ts=(ts_i, ts_r))
        payloads = self._child_rekey_payloads(ctx)
        ok = self._queue(ExchangeType.CREATE_CHILD_SA, payloads,
                         lambda m, t: self._on_child_rekey_response(m, t, ctx), "rekey-child", now, child)
        if not ok:
            child.rekeying = False
            self._withdraw_spi(spi)
        return ok

    def _child_rekey_payloads(self, ctx: _RekeyCtx) -> list:
        assert ctx.old is not None
        payloads: list = [
            Notify(ProtocolId.ESP, ctx.old.sa.spi_in.to_bytes(4, "big"), NotifyType.REKEY_SA),
            SA(with_spi(self.ep.esp_proposals if ctx.dh else [without_dh(p) for p in self.ep.esp_proposals],
                         ctx.spi)),
            Nonce(ctx.nonce),
        ]
        if ctx.dh is not None:
            payloads.append(KE(ctx.dh.group, ctx.dh.public_bytes))
        return payloads + [TSi(ctx.offered_ts[0]), TSr(ctx.offered_ts[1])]

    def _retry_invalid_ke(self, msg: Message, ctx: _RekeyCtx, offered: list[Proposal],
                          build: Callable[[_RekeyCtx], list],
                          on_response: Callable[[Message, float, _RekeyCtx], None], kind: str, now: float) -> bool:
        """INVALID_KE_PAYLOAD naming a group we offered: ask once more with a KE of that group.
        False if not (then the response is an error like any other)."""
        bad_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
        if not bad_ke or ctx.retries >= 1 or len(bad_ke[0].data) != 2:
            return False
        group = int.from_bytes(bad_ke[0].data, "big")
        if group not in {dh_group(p) for p in offered}:
            return False
        ctx.retries += 1
        ctx.dh = crypto.DhKeyPair.generate(group, self.ep.rng)
        return self._queue(ExchangeType.CREATE_CHILD_SA, build(ctx), lambda m, t: on_response(m, t, ctx),
                           kind, now, ctx.old)

    def _on_child_rekey_response(self, msg: Message, now: float, ctx: _RekeyCtx) -> None:
        old = ctx.old
        assert old is not None
        if self._retry_invalid_ke(msg, ctx, self.ep.esp_proposals, self._child_rekey_payloads,
                                  self._on_child_rekey_response, "rekey-child", now):
            return
        nonce, ke = msg.find(Nonce), msg.find(KE)
        try:
            errors = [n for n in msg.find_all(Notify) if is_error_notify(n.notify_type)]
            if errors:
                raise ProtocolFailure(errors[0].notify_type, f"refused: {_notify_name(errors[0].notify_type)}")
            if nonce is None:
                raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child rekey response without Nonce")
            shared = None
            if ctx.dh is not None and not [n for n in msg.find_all(Notify) if is_error_notify(n.notify_type)]:
                if ke is None or ke.group != ctx.dh.group:
                    raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child rekey response without matching KE")
                try:
                    shared = ctx.dh.shared_secret(ke.data)
                except ValueError as e:
                    raise ProtocolFailure(NotifyType.INVALID_SYNTAX, f"bad KE value: {e}") from e
            self._accept_child_response(msg, ctx, old, now, ctx.nonce, nonce.data, shared)
        except ProtocolFailure as e:
            self._withdraw_spi(ctx.spi)
            old.rekeying = False
            old.rekey_at = self._retry_time(now)  # try again later, still within the lifetime
            self.ep.log(f"{self.peer_name}: child SA rekey failed: {e}")
            return
        self._owner().delete_children([old], now)

    def delete_children(self, children: list[Child], now: float) -> None:
        """INFORMATIONAL DELETE for child SAs (make-before-break: called once the new one is up)."""
        spis = [c.sa.spi_in.to_bytes(4, "big") for c in children if c.sa.spi_in in self.children]
        if not spis:
            return
        for c in children:
            self._remove_child(c)
        self._queue(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.ESP, spis)], lambda m, t: None,
                    "delete-child", now)

    def rekey_ike(self, now: float) -> bool:
        if not self.established or self._has_request("rekey-ike"):
            return False
        spi = self.ep.new_ike_spi()
        nonce = self.ep.rng(NONCE_LEN)
        assert self.proposal is not None
        group = dh_group(self.proposal) or dh_group(self.ep.ike_proposals[0])
        ctx = _RekeyCtx(nonce, spi, crypto.DhKeyPair.generate(group, self.ep.rng))
        return self._queue(ExchangeType.CREATE_CHILD_SA, self._ike_rekey_payloads(ctx),
                           lambda m, t: self._on_ike_rekey_response(m, t, ctx), "rekey-ike", now)

    def _ike_rekey_payloads(self, ctx: _RekeyCtx) -> list:
        return [SA(with_spi(self.ep.ike_proposals, ctx.spi)), Nonce(ctx.nonce), KE(ctx.dh.group, ctx.dh.public_bytes)]

    def _on_ike_rekey_response(self, msg: Message, now: float, ctx: _RekeyCtx) -> None:
        if self._retry_invalid_ke(msg, ctx, self.ep.ike_proposals, self._ike_rekey_payloads,
                                  self._on_ike_rekey_response, "rekey-ike", now):
            return
        sa, nonce, ke = msg.find(SA), msg.find(Nonce), msg.find(KE)
        if (sa is None or nonce is None or ke is None or len(sa.proposals) != 1
                or len(sa.proposals[0].spi) != 8 or ke.group != ctx.dh.group
                or proposals.select(sa.proposals, self.ep.ike_proposals) is None):
            self.rekey_at = self._retry_time(now)
            self.ep.log(f"{self.peer_name}: IKE SA rekey refused or malformed answer")
            return
        try:
            shared = ctx.dh.shared_secret(ke.data)
        except ValueError:
            self.rekey_at = self._retry_time(now)
            return
        chosen = sa.proposals[0]
        self._replace_by(chosen, chosen.spi, ctx.spi, ctx.nonce, nonce.data, shared, we_initiated=True, now=now)
        # make-before-break: the new IKE SA exists; now retire this one.
        self.state = State.REKEYED
        self.queue.append(_Request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE, [])],
                                   lambda m, t: self._close(t, None, quiet=True), "delete-ike"))

    def delete(self, now: float, reason: str = "terminated") -> None:
        """Delete this IKE SA (and with it its children) with an INFORMATIONAL DELETE."""
        if self.state in (State.CLOSED, State.DELETING):
            return
        if self.state != State.ESTABLISHED:
            self._close(now, reason)
            return
        self.state = State.DELETING
        self.close_reason = reason
        self.queue.clear()  # the outstanding request (if any) still completes first: window of one
        self.queue.append(_Request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE, [])],
                                   lambda m, t: self._close(t, reason), "delete-ike"))
        self._pump(now)

    def send_notify(self, notify_type: int, data: bytes, now: float) -> bool:
        return self._queue(ExchangeType.INFORMATIONAL, [Notify(ProtocolId.NONE, b"", notify_type, data)],
                           lambda m, t: None, "notify", now)

    # --- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times: list[float] = []
        if self.pending is not None:
            times.append(self.pending.next_at)
        if self.state == State.HALF_OPEN:
            times.append(self.created + HALF_OPEN_TIMEOUT)
        elif self.state == State.ESTABLISHED:
            if self.pending is None and not self.queue:
                times.append(self.last_recv + self.ep.config.dpd_interval_s)
            if self.rekey_at is not None:
                times.append(self.rekey_at)
            if self.hard_at is not None:
                times.append(self.hard_at)
            for c in self.children.values():
                times.append(c.hard_at)
                if c.expire_at is not None:
                    times.append(c.expire_at)
                elif not c.rekeying:  # a rekey under way is timed by its request's retransmissions
                    times.append(c.rekey_at)
        elif self.state == State.REKEYED and self.linger_until is not None:
            times.append(self.linger_until)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        req = self.pending
        if req is not None and now >= req.next_at:
            if req.tries >= RETRANSMIT_TRIES:
                self.pending = None
                if req.kind == "delete-ike":
                    self._close(now, self.close_reason, quiet=self.state == State.REKEYED)
                else:
                    self._close(now, "peer not responding")
                return
            req.tries += 1
            req.timeout *= 2
            req.next_at = now + req.timeout
            self._send_raw(req.data)
        if self.state == State.HALF_OPEN and now >= self.created + HALF_OPEN_TIMEOUT:
            self._close(now, "half-open IKE SA timed out", quiet=True)
            return
        if self.state == State.REKEYED and self.linger_until is not None and now >= self.linger_until:
            self._close(now, None, quiet=True)
            return
        if self.state != State.ESTABLISHED:
            return
        if self.hard_at is not None and now >= self.hard_at:
            self.delete(now, "IKE SA lifetime expired")
            return
        if self.pending is None and not self.queue and now >= self.last_recv + self.ep.config.dpd_interval_s:
            # Dead peer detection: an empty INFORMATIONAL; its response refreshes last_recv.
            self._queue(ExchangeType.INFORMATIONAL, [], lambda m, t: None, "dpd", now)
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = self._retry_time(now)  # if it fails, try again a bit later
            self.rekey_ike(now)
        for child in list(self.children.values()):
            if (child.expire_at is not None and now >= child.expire_at) or now >= child.hard_at:
                self.delete_children([child], now)
            elif child.expire_at is None and not child.rekeying and now >= child.rekey_at:
                child.rekey_at = self._retry_time(now)
                self.rekey_child(child, now)

    # --- status ---------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        return {
            "peer": self.peer_name,
            "state": self.state.value,
            "local": f"{self.ep.local_addr}:{self.local_port}",
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "initiator": self.initiator,
            "algorithms": describe(self.proposal) if self.proposal else "",
            "age_s": round(now - (self.established_at or self.created), 1),
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "nat": {"local": self.nat_local, "remote": self.nat_remote, "encap": self.encap},
            "vpnlab_peer": self.peer_vendor,
        }


def _offer(msg: Message) -> tuple[Any, Any, Any]:
    """What an IKE_SA_INIT request offers: its SA, KE and Nonce payloads."""
    return msg.find(SA), msg.find(KE), msg.find(Nonce)


def _notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"


_R = IkeSession
# The one table: (state, exchange, is_response) → handler. Requests return the response payloads;
# responses are routed to the outstanding request's own callback. Absent → dropped.
_TRANSITIONS: dict[tuple[State, int, bool], Callable[..., Any]] = {
    (State.INIT_SENT, ExchangeType.IKE_SA_INIT, True): _R._to_pending,
    (State.HALF_OPEN, ExchangeType.IKE_AUTH, False): _R._on_auth_request,
    (State.AUTH_SENT, ExchangeType.IKE_AUTH, True): _R._to_pending,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA, False): _R._on_create_child_request,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA, True): _R._to_pending,
    (State.ESTABLISHED, ExchangeType.INFORMATIONAL, False): _R._on_informational_request,
    (State.ESTABLISHED, ExchangeType.INFORMATIONAL, True): _R._to_pending,
    (State.REKEYED, ExchangeType.CREATE_CHILD_SA, False): _R._refuse_temporarily,
    (State.REKEYED, ExchangeType.CREATE_CHILD_SA, True): _R._to_pending,
    (State.REKEYED, ExchangeType.INFORMATIONAL, False): _R._on_informational_request,
    (State.REKEYED, ExchangeType.INFORMATIONAL, True): _R._to_pending,
    (State.DELETING, ExchangeType.INFORMATIONAL, False): _R._on_informational_request,
    (State.DELETING, ExchangeType.INFORMATIONAL, True): _R._to_pending,
    (State.DELETING, ExchangeType.CREATE_CHILD_SA, False): _R._refuse_temporarily,
    (State.DELETING, ExchangeType.CREATE_CHILD_SA, True): _R._on_rekey_response_while_deleting,
}
