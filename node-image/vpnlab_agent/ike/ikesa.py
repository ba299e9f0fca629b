"""The state of one IKE SA and the primitives every exchange uses; no exchange logic here.

The exchanges live in their own modules (handshake, children, rekey, informational), session.py
routes messages and timers to them. They all work on an `IkeSa` through its public attributes, and
reach the endpoint only through `SessionHost`, the narrow interface the endpoint implements.
Every state change goes through `IkeSa.set_state`, checked against `STATE_CHANGES`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import crypto, fragment, proposals
from vpnlab_agent.ike.certs import Credentials
from vpnlab_agent.ike.codec import Message, Notify, Payload, Proposal, TrafficSelector, VendorId, encode
from vpnlab_agent.ike.constants import NATT_PORT, NotifyType
from vpnlab_agent.ike.events import AuthFailed, ChildSADeleted, Event, IkeSADown, IkeSAUp
from vpnlab_agent.ike.extension import ChildMeta, Extensions, SaView
from vpnlab_agent.ike.window import Request, RequestKind, RequestWindow
from vpnlab_agent.sa import ChildSA

ZERO_SPI = bytes(8)
NONCE_LEN = 32
# Bounded retries of IKE_SA_INIT after COOKIE / INVALID_KE_PAYLOAD answers.
MAX_INIT_RETRIES = 3
# A responder that never sees IKE_AUTH forgets the half-open SA after this long.
HALF_OPEN_TIMEOUT = 30.0
# How long a replaced IKE SA or child SA lingers waiting for the peer's DELETE; a refused one
# (an extension answered IKE_AUTH with notifies only) answers retransmissions that long too.
REKEYED_GRACE = 30.0
# A failed or refused rekey is tried again after this plus up to RETRY_JITTER seconds, so two
# peers that collided do not collide again in lockstep.
RETRY_AFTER = 5.0
RETRY_JITTER = 5.0
# The responder rekeys when this share of the rekey margin is left (the initiator at the margin).
RESPONDER_MARGIN_SHARE = 0.4
# An IKE_AUTH from an identity no peer has yet may wait this long for an extension to add the peer
# (Extension.hold_auth); a retransmission after that gets AUTHENTICATION_FAILED as usual.
HOLD_AUTH_S = 1.0


class State(enum.Enum):
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request out
    HALF_OPEN = "half-open"  # responder: answered IKE_SA_INIT, waiting for IKE_AUTH
    ESTABLISHED = "established"
    REFUSED = "refused"  # responder: an extension answered IKE_AUTH instead (RFC 5685 REDIRECT)
    REKEYED = "rekeyed"  # replaced by a new IKE SA, waiting for (or sending) its DELETE
    DELETING = "deleting"  # our DELETE is out
    CLOSED = "closed"


# Every state change there is; anything else is a bug (counted, logged, refused).
STATE_CHANGES: dict[State, frozenset[State]] = {
    State.INIT_SENT: frozenset({State.INIT_SENT, State.AUTH_SENT, State.CLOSED}),  # again: COOKIE, INVALID_KE
    State.AUTH_SENT: frozenset({State.ESTABLISHED, State.CLOSED}),
    State.HALF_OPEN: frozenset({State.ESTABLISHED, State.REFUSED, State.CLOSED}),
    State.ESTABLISHED: frozenset({State.REKEYED, State.DELETING, State.CLOSED}),
    State.REFUSED: frozenset({State.CLOSED}),
    State.REKEYED: frozenset({State.CLOSED}),
    # An IKE rekey answered after delete(): it completes, so that its new IKE SA is deleted too.
    State.DELETING: frozenset({State.REKEYED, State.CLOSED}),
    State.CLOSED: frozenset(),
}


class ProtocolFailure(Exception):
    """The peer's message is authentic but unacceptable; `notify` is the error to answer with."""

    def __init__(self, notify: int, reason: str, data: bytes = b"") -> None:
        super().__init__(reason)
        self.notify = notify
        self.data = data


def notify_name(t: int) -> str:
    try:
        return NotifyType(t).name
    except ValueError:
        return f"notify {t}"


def error_notifies(msg: Message) -> list[Notify]:
    return [n for n in msg.find_all(Notify) if 0 < n.notify_type < 16384]


class SessionHost(Protocol):
    """What a session needs from its endpoint (IkeEndpoint implements it)."""

    config: IkeConfig
    local_addr: str
    force_encap: bool
    rng: Callable[[int], bytes]
    ike_proposals: list[Proposal]
    esp_proposals: list[Proposal]
    vendor_id: bytes
    extensions: Extensions
    credentials: Credentials | None
    wall_clock: Callable[[], datetime.datetime]
    fragment_stats: fragment.FragmentStats

    def send(self, data: bytes, addr: tuple[str, int], local_port: int) -> None: ...

    def emit(self, event: Event) -> None: ...

    def log(self, text: str) -> None: ...

    def internal_error(self, text: str) -> None: ...

    def peer_by_identity(self, id_type: int, data: bytes) -> PeerConfig | None: ...

    def reqid(self, peer: str, local_ts: tuple[str, ...], remote_ts: tuple[str, ...]) -> int: ...

    def new_ike_spi(self) -> bytes: ...

    def new_child_spi(self) -> bytes: ...

    def release_child_spi(self, spi_in: int) -> None: ...

    def has_other_sa(self, sa: IkeSa) -> bool: ...

    def initial_contact(self, sa: IkeSa, now: float) -> None: ...

    def session_up(self, sa: IkeSa) -> None: ...

    def adopt(self, sa: IkeSa) -> None: ...

    def closed(self, sa: IkeSa) -> None: ...


# --- bookkeeping records --------------------------------------------------------------------


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
class ChildCtx:
    """What we offered in one exchange we initiated that creates a child or IKE SA."""

    nonce: bytes
    spi: bytes
    dh: Any | None
    old: Child | None = None
    retries: int = 0
    offered_ts: tuple[list[TrafficSelector], list[TrafficSelector]] = field(default_factory=lambda: ([], []))


class IkeSa:
    def __init__(self, host: SessionHost, *, initiator: bool, local_spi: bytes, remote: tuple[str, int],
                 local_port: int, now: float, peer: PeerConfig | None = None, state: State | None = None) -> None:
        self.host = host
        self.initiator = initiator  # we are the original initiator of this IKE SA
        self.peer = peer
        self.spi_i = local_spi if initiator else ZERO_SPI
        self.spi_r = ZERO_SPI if initiator else local_spi
        self.remote = remote
        self.local_port = local_port
        self.state = state or (State.INIT_SENT if initiator else State.HALF_OPEN)
        self.created = now
        self.established_at: float | None = None
        self.last_recv = now  # our last authenticated IKE message from the peer
        self.last_esp = float("-inf")  # the last authentic ESP on one of our children (the data plane says)
        self.rekey_at: float | None = None
        self.hard_at: float | None = None  # end of the IKE SA's lifetime if rekeying keeps failing
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
        self.init_extra: list[Payload] = []  # initiator: extra IKE_SA_INIT payloads (REDIRECTED_FROM)
        # Responder: other versions of the peer's IKE_SA_INIT request that we answered with the
        # same response (the same SA, KE and Nonce, differing only in a COOKIE notify). The peer
        # signs whichever it sent last, so AUTH is checked against each (RFC 7296 §2.1, §2.6).
        self.init_req_variants: list[bytes] = []
        self.init_offer: tuple[Any, Any, Any] | None = None

        self.nat_local = False  # we are behind a NAT
        self.nat_remote = False  # the peer is (or, with force_encap, pretends to be)
        self.encap = False
        self.peer_vendor_ids: list[bytes] = []  # from authenticated messages only
        self.peer_notifies: set[int] = set()  # status notify types seen in IKE_SA_INIT and IKE_AUTH

        self.window = RequestWindow(self._encode_request, self.send_all)
        self.window.dpd_tries = host.config.dpd_retries
        self.peer_mid = 0  # the peer's next request
        self.last_resp: tuple[int, list[bytes]] | None = None  # our last response (its datagrams), for retransmissions
        # RFC 7383: the peer's fragmented requests and responses, one message each at a time
        self.reassembly = {resp: fragment.Reassembler(host.fragment_stats) for resp in (False, True)}

        self.children: dict[int, Child] = {}
        # Inbound SPIs we offered for a child not installed yet: released if it never comes, so
        # the endpoint's set of SPIs in use does not grow with every failed negotiation.
        self.offered_spis: set[bytes] = set()
        self.init_key: tuple[bytes, tuple[str, int]] | None = None  # responder: (SPIi, addr) of IKE_SA_INIT
        self.auth_ctx = ChildCtx(b"", b"", None)  # initiator: what IKE_AUTH offered for the first child
        self.last_raw = b""  # bytes of the response being handled (IKE_SA_INIT's are signed by AUTH)
        self.close_after_response: tuple[str, bool] | None = None  # (reason, quiet) once answered
        # The request being handled, as received: (data, header, addr, local_port, now). An IKE_AUTH
        # held for a peer that may appear keeps it in `held` (with the claimed identity) to replay.
        self.request: tuple[Message, bytes, Any, tuple[str, int], int, float] | None = None
        self.held: tuple[tuple[int, bytes], tuple[Message, bytes, Any, tuple[str, int], int, float]] | None = None
        self.held_since: float | None = None
        self.successor: IkeSa | None = None  # the IKE SA that replaced this one

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

    @property
    def alive_at(self) -> float:
        """When the peer last proved alive: any cryptographically protected message, on the IKE SA
        or one of its child SAs (RFC 7296 §2.4); DPD checks only after dpd_interval_s of silence."""
        return max(self.last_recv, self.last_esp)

    @property
    def peer_vendor(self) -> bool:
        """The peer announced the vpnlab Vendor ID (in an authenticated message)."""
        return self.host.vendor_id in self.peer_vendor_ids

    @property
    def my_mid(self) -> int:
        return self.window.my_mid

    @property
    def pending(self) -> Request | None:
        return self.window.pending

    def view(self) -> SaView:
        return SaView(self.peer.name if self.peer else None, self.initiator, self.state.value,
                      (self.host.local_addr, self.local_port), self.remote, self.spi_i, self.spi_r,
                      tuple(self.peer_vendor_ids), tuple(sorted(self.peer_notifies)), self.ni)

    def set_state(self, new: State) -> None:
        if new not in STATE_CHANGES[self.state]:
            self.host.internal_error(f"{self.peer_name}: state change {self.state.value} -> {new.value} refused")
            return
        self.state = new

    def retry_time(self, now: float) -> float:
        return now + RETRY_AFTER + RETRY_JITTER * self.host.rng(1)[0] / 255

    def owner(self) -> IkeSa:
        """Where children live now: a rekeyed-away IKE SA hands new ones to its successor."""
        return self.successor if self.state == State.REKEYED and self.successor is not None else self

    def rekey_after(self, lifetime: float) -> float:
        """When to rekey an SA of this lifetime: `rekey_margin_s` before its end (default a tenth);
        the responder waits until 40 % of the margin is left, so the two sides of one SA rarely
        start a rekey at the same moment (collision handling of RFC 7296 §2.8.1 is not done)."""
        margin = self.host.config.rekey_margin_s or lifetime / 10
        return lifetime - (margin if self.initiator else RESPONDER_MARGIN_SHARE * margin)

    def spawn(self, **kw: Any) -> IkeSa:
        """A new IKE SA of the same kind (an IKE rekey's successor)."""
        return type(self)(self.host, **kw)

    # --- output ---------------------------------------------------------------------------

    def msg(self, exchange: int, mid: int, response: bool, payloads: list) -> Message:
        return Message(self.spi_i, self.spi_r, exchange, mid, self.initiator, response, payloads)

    def send_raw(self, data: bytes, addr: tuple[str, int] | None = None, local_port: int | None = None) -> None:
        self.host.send(data, addr or self.remote, self.local_port if local_port is None else local_port)

    def send_all(self, datagrams: list[bytes], addr: tuple[str, int] | None = None,
                 local_port: int | None = None) -> None:
        if len(datagrams) > 1:
            self.host.fragment_stats.sent += len(datagrams)
        for data in datagrams:
            self.send_raw(data, addr, local_port)

    def fragment_limit(self) -> int | None:
        """Largest IKE datagram we send once both ends announced RFC 7383 support, else None:
        the configured IP datagram size less the IP and UDP headers (and the non-ESP marker on 4500)."""
        cfg = self.host.config
        if not cfg.fragmentation or NotifyType.IKEV2_FRAGMENTATION_SUPPORTED not in self.peer_notifies:
            return None
        ip = 40 if ":" in self.host.local_addr else 20
        return cfg.fragment_size - ip - 8 - (4 if self.local_port == NATT_PORT else 0)

    def seal(self, msg: Message) -> list[bytes]:
        if self.sk_out is None:
            return [encode(msg)]
        return fragment.seal(msg, self.sk_out, self.fragment_limit(), self.host.fragment_stats)

    def _encode_request(self, req: Request) -> list[bytes]:
        return self.seal(self.msg(req.exchange, req.mid, False, req.payloads))

    def queue(self, exchange: int, payloads: list, on_response: Callable[[Message, float], None],
              kind: RequestKind, now: float, child: Child | None = None,
              on_fail: Callable[[], None] | None = None) -> bool:
        if self.state == State.CLOSED:
            return False
        return self.window.add(Request(exchange, payloads, on_response, kind, child=child, on_fail=on_fail), now)

    def pump(self, now: float) -> None:
        if self.state != State.CLOSED:
            self.window.pump(now)

    def respond(self, exchange: int, mid: int, payloads: list, addr: tuple[str, int], local_port: int) -> None:
        datagrams = self.seal(self.msg(exchange, mid, True, payloads))
        self.last_resp = (mid, datagrams)
        self.peer_mid = mid + 1
        self.reassembly[False].clear()
        self.send_all(datagrams, addr, local_port)

    def our_vendor_ids(self) -> list[VendorId]:
        return [VendorId(v) for v in (self.host.vendor_id, *self.host.extensions.vendor_ids)]

    def learn_peer(self, msg: Message) -> None:
        """Vendor IDs and status notifies of an authenticated message (or, for notifies only, IKE_SA_INIT)."""
        for v in msg.find_all(VendorId):
            if v.data not in self.peer_vendor_ids and len(self.peer_vendor_ids) < 16:
                self.peer_vendor_ids.append(v.data)
        self.peer_notifies |= {n.notify_type for n in msg.find_all(Notify) if n.notify_type >= 16384}

    # --- keys -----------------------------------------------------------------------------

    def set_keys(self, chosen: Proposal, shared: bytes) -> None:
        self.proposal = chosen
        self.suite = proposals.suite_from_proposal(chosen)
        self.keys = crypto.derive_ike_keys(self.suite, self.ni, self.nr, shared, self.spi_i, self.spi_r)
        self.set_ciphers()

    def set_ciphers(self) -> None:
        k = self.keys
        ini = crypto.SkCipher(self.suite, k.sk_ei, k.sk_ai)
        res = crypto.SkCipher(self.suite, k.sk_er, k.sk_ar)
        self.sk_out, self.sk_in = (ini, res) if self.initiator else (res, ini)

    def float_to_natt(self) -> None:
        # RFC 7296 §2.23: once a NAT is detected, IKE moves to 4500 from IKE_AUTH on.
        if self.encap and self.local_port != NATT_PORT:
            self.remote = (self.remote[0], NATT_PORT)
            self.local_port = NATT_PORT

    # --- children bookkeeping -------------------------------------------------------------

    def remove_child(self, child: Child) -> None:
        if self.children.pop(child.sa.spi_in, None) is not None:
            self.host.release_child_spi(child.sa.spi_in)
            self.host.emit(ChildSADeleted(child.sa.name, child.sa.spi_in, child.sa.reqid))

    def offer_spi(self) -> bytes:
        spi = self.host.new_child_spi()
        self.offered_spis.add(spi)
        return spi

    def withdraw_spi(self, spi: bytes) -> None:
        """The child we offered this inbound SPI for will not exist."""
        if spi in self.offered_spis:
            self.offered_spis.discard(spi)
            self.host.release_child_spi(int.from_bytes(spi, "big"))

    def child_by_out(self, spi: bytes) -> Child | None:
        want = int.from_bytes(spi, "big")
        return next((c for c in self.children.values() if c.sa.spi_out == want), None)

    # --- establishment / close ------------------------------------------------------------

    def start_lifetime(self, now: float) -> None:
        self.established_at = now
        self.rekey_at = now + self.rekey_after(self.host.config.ike_lifetime_s)
        self.hard_at = now + self.host.config.ike_lifetime_s

    def establish(self, now: float) -> None:
        assert self.peer is not None and self.suite is not None
        self.set_state(State.ESTABLISHED)
        self.start_lifetime(now)
        self.host.emit(IkeSAUp(self.peer.name, self.spi_i, self.spi_r, self.initiator, self.suite.describe(),
                               self.remote, vendor_ids=tuple(self.peer_vendor_ids),
                               notifies=tuple(sorted(self.peer_notifies))))
        self.host.session_up(self)

    def auth_failed(self, now: float, who: str, reason: str, addr: tuple[str, int] | None = None) -> None:
        self.host.emit(AuthFailed(who, addr or self.remote, reason))
        self.host.log(f"{who}: authentication failed: {reason}")
        self.close(now, f"authentication failed: {reason}", quiet=not self.initiator)

    def close(self, now: float, reason: str | None, *, quiet: bool = False) -> None:
        """Forget this IKE SA. Children are reported deleted; IkeSADown unless quiet (a rekeyed-away
        SA, or a responder SA that never belonged to a known peer)."""
        if self.state == State.CLOSED:
            return
        was = self.state
        self.set_state(State.CLOSED)
        self.close_reason = reason
        for child in list(self.children.values()):
            self.remove_child(child)
        for spi in list(self.offered_spis):
            self.withdraw_spi(spi)
        for req in self.window.clear():
            if req.on_fail is not None:
                req.on_fail()
        if (not quiet and was not in (State.REKEYED, State.REFUSED) and self.peer is not None
                and (self.initiator or was != State.HALF_OPEN)):
            self.host.emit(IkeSADown(self.peer.name, reason or "closed"))
        self.host.extensions.ike_closed(self.view(), now)
        self.host.closed(self)

    def abandon(self, now: float, reason: str) -> None:
        """Forget a half-open responder SA without a word to the peer."""
        if self.state == State.HALF_OPEN:
            self.close(now, reason, quiet=True)

    # --- status ---------------------------------------------------------------------------

    def move_peer(self, addr: tuple[str, int]) -> None:
        """Follow the peer to `addr` (an authenticated message came from there, RFC 7296 §2.23) and
        tell the data plane, so ESP goes there too without waiting for a rekey."""
        moved = addr != self.remote and bool(self.children)
        self.remote, self.local_port, self.encap = addr, NATT_PORT, True
        if moved:
            from vpnlab_agent.ike.events import PeerMoved

            self.host.emit(PeerMoved(self.peer_name, addr, tuple(self.children)))

    def status(self, now: float) -> dict[str, Any]:
        return {
            "peer": self.peer_name,
            "state": self.state.value,
            "local": f"{self.host.local_addr}:{self.local_port}",
            "remote": f"{self.remote[0]}:{self.remote[1]}",
            "initiator": self.initiator,
            "algorithms": self.suite.describe() if self.suite is not None else "",
            "age_s": round(now - (self.established_at or self.created), 1),
            "spi_i": self.spi_i.hex(),
            "spi_r": self.spi_r.hex(),
            "nat": {"local": self.nat_local, "remote": self.nat_remote, "encap": self.encap},
            "vpnlab_peer": self.peer_vendor,
        }


def carry_meta(old: ChildSA, new: ChildSA, meta: ChildMeta | None) -> ChildSA:
    """A rekeyed child keeps its predecessor's metadata; an extension's meta goes on top."""
    keep = {k: getattr(old, k) for k in ChildMeta.__dataclass_fields__ if hasattr(old, k)}
    new = dataclasses.replace(new, **keep) if keep else new
    return meta.apply(new) if meta is not None else new

