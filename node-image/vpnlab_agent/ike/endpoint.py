"""Many IKE SAs behind one address: dispatch, responder admission, the API for owners and extensions.

Sans-I/O, in the aioquic style. Inputs: API calls (`connect`, `rekey_child`, `rekey_ike`,
`terminate`, `send_notify`, ...), `receive_datagram(data, addr, local_port, now)` and
`handle_timer(now)`. Outputs: `datagrams_to_send(now)`, `get_timer()`, `next_event()`, and
`wakeup()` (if set) whenever an API call outside input handling produced output, so the owner can
flush without being told by each caller. Datagrams carry no non-ESP marker: the I/O layer strips and
adds it on port 4500.

A new IKE_SA_INIT request is checked here, before any state is kept: the admission policies
(admission.py: cookies, then extensions), proposal and KE group. Everything else is routed by our
SPI to its `IkeSession`. Sessions reach the endpoint only through the `SessionHost` methods below.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import admission, fragment, informational, natt, proposals, sa_status
from vpnlab_agent.ike.certs import Credentials
from vpnlab_agent.ike.codec import KE, SA, Header, IntegrityError, Nonce, ParseError, Payload, Proposal, decode, decode_header
from vpnlab_agent.ike.constants import IKE_PORT, NATT_PORT, VENDOR_ID, ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.events import Event, InformationalDone, Redirected
from vpnlab_agent.ike.extension import AskCookie, Extension, Extensions, ReplyWith, SaView
from vpnlab_agent.ike.ikesa import ZERO_SPI, IkeSa
from vpnlab_agent.ike.policy import identity
from vpnlab_agent.ike.proposals import dh_group
from vpnlab_agent.ike.session import IkeSession, State
from vpnlab_agent.ike.window import REDIRECTED_INIT_TRIES
from vpnlab_agent.log import LogLines

# Bounds on what a flood of peers can make us hold.
DEFAULT_COOKIE_THRESHOLD = 50
DEFAULT_MAX_HALF_OPEN = 2000
MAX_EVENTS = 100_000
MAX_OUTBOX = 10_000
MAX_LOG_LINES = 1000
_GONE = (State.CLOSED, State.REKEYED, State.DELETING)


class IkeError(Exception):
    """A local API call that cannot be done (unknown peer, no IKE SA); one-line message."""


SUPERSEDE_AFTER_S = 2.0  # an initiator gives up on an attempt only after several retransmissions


class IkeEndpoint(LogLines):
    def __init__(
        self,
        config: IkeConfig,
        local_addr: str,
        *,
        force_encap: bool,
        vendor_id: bytes = VENDOR_ID,
        rng: Callable[[int], bytes] = os.urandom,
        cookie_threshold: int = DEFAULT_COOKIE_THRESHOLD,
        max_half_open: int = DEFAULT_MAX_HALF_OPEN,
        extensions: Iterable[Extension] = (),
        credentials: Credentials | None = None,
        wall_clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        """credentials: the lab CA, and our certificate and key for auth "cert" (ike.certs);
        wall_clock: UTC calendar time, to check certificate validity (needed with credentials)."""
        if (config.auth == "cert" or any(p.auth == "cert" for p in config.peers)) and credentials is None:
            raise IkeError("certificate authentication needs credentials (the lab CA, our certificate and key)")
        if config.auth == "cert" and (credentials is None or credentials.cert is None or credentials.key is None):
            raise IkeError("auth cert needs our certificate and private key")
        if credentials is not None and wall_clock is None:
            raise IkeError("checking certificates needs a wall clock")
        if config.fragment_size < fragment.MIN_LIMIT + 48:  # the IP, UDP and non-ESP marker headers
            raise IkeError(f"fragment_size {config.fragment_size} is too small")
        self.fragment_stats = fragment.FragmentStats()
        self.credentials = credentials
        self.wall_clock = wall_clock or (lambda: datetime.datetime.min)
        self.config = config
        self.local_addr = local_addr
        self.force_encap = force_encap
        self.vendor_id = vendor_id  # ours, always announced; extensions add their own
        self.rng = rng
        self.max_half_open = max_half_open
        self.ike_proposals: list[Proposal] = proposals.ike_proposals_from_config(list(config.ike_proposals))
        self.esp_proposals: list[Proposal] = proposals.esp_proposals_from_config(list(config.esp_proposals))
        self._peers_by_id = {identity(p.remote_id): p for p in config.peers}
        self._dynamic: set[str] = set()  # peers added at run time (add_peer), removable
        self._sessions: dict[bytes, IkeSession] = {}  # by our SPI
        self._half_open: dict[tuple[bytes, tuple[str, int]], IkeSa] = {}  # by (SPIi, peer addr)
        # Every SA we answered IKE_SA_INIT for, so a late retransmission of that request is
        # recognised (and ignored) rather than taken for a new SA costing another DH.
        self._by_init: dict[tuple[bytes, tuple[str, int]], IkeSa] = {}
        self._out: deque[tuple[bytes, tuple[str, int], int]] = deque(maxlen=MAX_OUTBOX)
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._reqids: dict[tuple[str, tuple[str, ...], tuple[str, ...]], int] = {}
        self._child_spis: set[bytes] = set()
        self._cookies = admission.CookiePolicy(rng(32), cookie_threshold)
        self._refs = itertools.count(1)
        self.log_lines: deque[str] = deque(maxlen=MAX_LOG_LINES)
        self.internal_errors = 0  # bugs caught at the boundary; tests assert it stays 0
        self.extensions = Extensions(on_error=self.internal_error)
        self.wakeup: Callable[[], None] | None = None
        self._woken = False
        for ext in extensions:
            self.add_extension(ext)

    @property
    def cookie_threshold(self) -> int:
        return self._cookies.threshold

    @cookie_threshold.setter
    def cookie_threshold(self, value: int) -> None:
        self._cookies.threshold = value

    def add_extension(self, ext: Extension) -> None:
        self.extensions.items.append(ext)
        ext.attach(self)

    # --- API: peers -------------------------------------------------------------------------

    def peer(self, name: str) -> PeerConfig:
        for p in self.config.peers:
            if p.name == name:
                return p
        raise IkeError(f"unknown IKE peer {name!r} (peers: {', '.join(p.name for p in self.config.peers) or 'none'})")

    def add_peer(self, peer: PeerConfig, now: float | None = None) -> None:
        """Add (or replace) a dynamic peer at run time: the Advanced Mesh shortcut peers. An IKE_AUTH
        from it that an extension held (Extension.hold_auth) is answered now."""
        static = {p.name for p in self.config.peers} - self._dynamic
        if peer.name in static:
            raise IkeError(f"peer {peer.name!r} is configured statically")
        other = self._peers_by_id.get(identity(peer.remote_id))
        if other is not None and other.name != peer.name:
            raise IkeError(f"identity {peer.remote_id!r} already belongs to peer {other.name!r}")
        kept = tuple(p for p in self.config.peers if p.name != peer.name)
        self.config = dataclasses.replace(self.config, peers=kept + (peer,))
        self._dynamic.add(peer.name)
        self._peers_by_id = {identity(p.remote_id): p for p in self.config.peers}
        want = identity(peer.remote_id)
        for s in list(self._sessions.values()):
            if s.state == State.HALF_OPEN and s.held is not None and s.held[0] == want and s.held[1][2].message_id == s.peer_mid:
                msg, data, hdr, addr, local_port, then = s.held[1]
                s.held = None
                s.handle(msg, data, hdr, addr, local_port, then if now is None else now)

    def is_dynamic(self, name: str) -> bool:
        return name in self._dynamic

    def remove_peer(self, name: str, now: float) -> None:
        """Delete the IKE SAs with a dynamic peer (INFORMATIONAL DELETE), then forget the peer."""
        if name not in self._dynamic:
            raise IkeError(f"peer {name!r} is not a dynamic peer")
        for s in self._of(name, (State.CLOSED, State.DELETING)):
            s.delete(now, "shortcut removed")
        self._dynamic.discard(name)
        self.config = dataclasses.replace(self.config, peers=tuple(p for p in self.config.peers if p.name != name))
        self._peers_by_id = {identity(p.remote_id): p for p in self.config.peers}
        self._wake()

    def is_up(self, peer: str) -> bool:
        return any(s.established and s.peer is not None and s.peer.name == peer for s in self._sessions.values())

    def sas(self) -> list[SaView]:
        """Every IKE SA we hold, as extensions see them."""
        return [s.view() for s in self._sessions.values()]

    # --- API: IKE SAs -----------------------------------------------------------------------

    def connect(self, peer_name: str, now: float, *, address: str | None = None,
                init_payloads: Sequence[Payload] = (), port: int = IKE_PORT, init_tries: int | None = None) -> None:
        """Start IKE_SA_INIT towards a peer (at its configured address, or `address`), with
        `init_payloads` added to IKE_SA_INIT; nothing if an IKE SA to it exists or is underway.
        Another `port` (a NAT mapping) is reached from our UDP 4500 (RFC 7296 §2.23)."""
        peer = self.peer(peer_name)
        to = address or peer.address
        if to is None:
            raise IkeError(f"peer {peer_name!r} has no address; it can only initiate to us")
        if self._of(peer.name, _GONE):
            return
        s = IkeSession(self, initiator=True, local_spi=self.new_ike_spi(), remote=(to, port),
                       local_port=IKE_PORT if port == IKE_PORT else NATT_PORT, now=now, peer=peer)
        s.init_extra = list(init_payloads)
        s.window.init_tries = init_tries
        self._sessions[s.local_spi] = s
        s.start(now)
        self._wake()

    def reconnect(self, peer: str, address: str, now: float, *, init_payloads: Sequence[Payload] = (),
                  reason: str = "redirected") -> None:
        """Give up our IKE SAs with the peer (an established one gets a DELETE) and connect to it
        at another address (RFC 5685: the gateway it redirected us to, with REDIRECTED_FROM)."""
        self.peer(peer)
        for s in self._of(peer, (State.CLOSED, State.DELETING)):
            if s.established:
                s.delete(now, reason)
            else:
                s.close(now, reason, quiet=True)  # a new attempt replaces it: not "down"
        self.emit(Redirected(peer, address))
        self.connect(peer, now, address=address, init_payloads=init_payloads, init_tries=REDIRECTED_INIT_TRIES)

    def close(self, sa: SaView, now: float, reason: str) -> None:
        """Delete one IKE SA (INFORMATIONAL DELETE when established)."""
        s = self._sessions.get(sa.local_spi)
        if s is not None:
            s.delete(now, reason)
            self._wake()

    def rekey_child(self, peer: str, now: float) -> int:
        """Rekey every child SA of the peer (make-before-break); returns how many were started."""
        s = self._established(peer)
        return sum(s.rekey_child(c, now) for c in list(s.children.values()) if c.expire_at is None)

    def rekey_child_spi(self, spi_in: int, now: float) -> bool:
        """Rekey the one child SA with this inbound SPI (the data plane saw its byte lifetime)."""
        for s in self._sessions.values():
            child = s.children.get(spi_in)
            if child is not None and s.established:
                return s.rekey_child(child, now)
        return False

    def peer_moved(self, spi_in: int, addr: tuple[str, int]) -> bool:
        return natt.peer_moved(self._sessions.values(), spi_in, addr)

    def keepalive_targets(self) -> list[tuple[str, int]]:
        return natt.keepalive_targets(self._sessions.values())

    def esp_seen(self, last_in: Mapping[int, float], now: float) -> None:
        """Inbound SPI -> when the data plane last authenticated ESP on it (same clock as `now`)."""
        informational.esp_seen(self._sessions.values(), last_in, now)

    def delete_child_spi(self, spi_in: int, now: float) -> bool:
        """DELETE the one child SA with this inbound SPI (e.g. the data plane could not install it)."""
        for s in self._sessions.values():
            child = s.children.get(spi_in)
            if child is not None:
                s.delete_children([child], now)
                return True
        return False

    def rekey_ike(self, peer: str, now: float) -> bool:
        return self._established(peer).rekey_ike(now)

    def terminate(self, peer: str, now: float) -> None:
        self.peer(peer)
        for s in self._of(peer, ()):
            s.delete(now, "terminated")

    def terminate_all(self, now: float) -> None:
        for s in list(self._sessions.values()):
            s.delete(now, "terminated")

    # --- API: INFORMATIONAL -----------------------------------------------------------------

    def send_notify(self, peer: str, notify_type: int, data: bytes, now: float) -> int:
        """A private notify in an INFORMATIONAL exchange; only to peers that sent our Vendor ID.
        Returns the reference its InformationalDone event will carry."""
        if not NotifyType.VPNLAB_PRIVATE_BASE <= notify_type <= 0xFFFF:
            raise IkeError(f"notify type {notify_type} is not in the private range")
        if not self._established(peer).peer_vendor:
            raise IkeError(f"peer {peer!r} did not announce the vpnlab Vendor ID")
        return self.send_informational(peer, [admission.notify(notify_type, data)], now)

    def send_informational(self, peer: str, payloads: Sequence[Payload], now: float) -> int:
        """An INFORMATIONAL request with these payloads to the peer's established IKE SA. Returns the
        reference of the InformationalDone event that says whether it was answered."""
        s = self._established(peer)
        ref = next(self._refs)
        if not s.send_informational(payloads, now, lambda ok: self.emit(InformationalDone(peer, ref, ok))):
            raise IkeError(f"too many requests queued for peer {peer!r}")
        self._wake()
        return ref

    # --- input ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_port: int, now: float) -> None:
        """One UDP payload from the peer at addr to our local_port. Never raises on peer input."""
        try:
            self._receive(data, addr, local_port, now)
        except Exception as e:  # noqa: BLE001 - a bug here must not take the agent down
            self.internal_error(f"internal error on datagram from {addr[0]}:{addr[1]}: {type(e).__name__}: {e}")

    def _receive(self, data: bytes, addr: tuple[str, int], local_port: int, now: float) -> None:
        try:
            hdr = decode_header(data)
        except ParseError:
            return
        if hdr.exchange == ExchangeType.IKE_SA_INIT and not hdr.response and hdr.spi_r == ZERO_SPI:
            self._init_request(data, hdr, addr, local_port, now)
            return
        local_spi = hdr.spi_r if hdr.initiator else hdr.spi_i
        s = self._sessions.get(local_spi)
        if s is not None:
            s.receive(data, hdr, addr, local_port, now)

    def handle_timer(self, now: float) -> None:
        for s in list(self._sessions.values()):
            deadline = s.next_deadline()
            if deadline is not None and deadline <= now:
                try:
                    s.handle_timer(now)
                except Exception as e:  # noqa: BLE001
                    self.internal_error(f"internal error in timer of {s.peer_name}: {type(e).__name__}: {e}")

    # --- output ---------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int], int]]:
        self._woken = False
        out = list(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        times = [t for s in self._sessions.values() if (t := s.next_deadline()) is not None]
        return min(times) if times else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def status(self, now: float) -> dict[str, Any]:
        return sa_status.endpoint_status(self._sessions.values(), len(self._half_open), self.fragment_stats, now)

    # --- responder admission --------------------------------------------------------------

    def _init_request(self, data: bytes, hdr: Header, addr: tuple[str, int], local_port: int, now: float) -> None:
        existing = self._by_init.get((hdr.spi_i, addr))
        if existing is not None:
            existing.receive(data, hdr, addr, local_port, now)  # type: ignore[attr-defined]
            return
        if not hdr.initiator or hdr.message_id != 0:
            return
        try:
            msg = decode(data)
        except ParseError as e:
            if e.notify_type == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD:
                self._refuse_init(hdr.spi_i, addr, local_port, e.notify_type, e.data)
            return
        except IntegrityError:
            return
        if len(self._half_open) >= self.max_half_open:
            return  # hard bound: beyond it, even answering with cookies is not worth it
        established = sum(1 for s in self._sessions.values() if s.established)
        req = admission.init_request(msg, addr, local_port, len(self._half_open), established)
        verdict = admission.decide([self._cookies, self.extensions], req, now)
        if isinstance(verdict, AskCookie):
            self._refuse_init(hdr.spi_i, addr, local_port, NotifyType.COOKIE, verdict.cookie)
            return
        if isinstance(verdict, ReplyWith):
            self.send(admission.stateless_answer(hdr.spi_i, list(verdict.notifies)), addr, local_port)
            return
        sa, ke, nonce = msg.find(SA), msg.find(KE), msg.find(Nonce)
        if sa is None or ke is None or nonce is None or not 16 <= len(nonce.data) <= 256:
            self._refuse_init(hdr.spi_i, addr, local_port, NotifyType.INVALID_SYNTAX)
            return
        offered = [p for p in sa.proposals if p.protocol == ProtocolId.IKE and not p.spi]
        chosen = proposals.select(offered, self.ike_proposals)
        if chosen is None:
            self.log(f"{addr[0]}: IKE_SA_INIT: no acceptable IKE proposal")
            self._refuse_init(hdr.spi_i, addr, local_port, NotifyType.NO_PROPOSAL_CHOSEN)
            return
        group = dh_group(chosen)
        if group is None or ke.group != group:
            self._refuse_init(hdr.spi_i, addr, local_port, NotifyType.INVALID_KE_PAYLOAD,
                              (group or 0).to_bytes(2, "big"))
            return
        s = IkeSession(self, initiator=False, local_spi=self.new_ike_spi(), remote=addr,
                       local_port=local_port, now=now)
        s.init_key = (hdr.spi_i, addr)
        try:
            s.respond_init(msg, data, addr, local_port, chosen, now)
        except ValueError as e:  # the peer's KE value failed validation
            self.log(f"{addr[0]}: IKE_SA_INIT: bad KE: {e}")
            self._refuse_init(hdr.spi_i, addr, local_port, NotifyType.INVALID_SYNTAX)
            return
        self._sessions[s.local_spi] = s
        self._half_open[(hdr.spi_i, addr)] = s
        self._by_init[(hdr.spi_i, addr)] = s

    def _refuse_init(self, spi_i: bytes, addr: tuple[str, int], local_port: int, notify: int,
                     data: bytes = b"") -> None:
        self.send(admission.stateless_answer(spi_i, [admission.notify(notify, data)]), addr, local_port)

    # --- SessionHost: what sessions may use ------------------------------------------------

    def send(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        self._out.append((data, addr, local_port))
        self._wake()

    def emit(self, event: Event) -> None:
        self._events.append(event)
        self._wake()

    def internal_error(self, text: str) -> None:
        self.internal_errors += 1
        self.log(text)

    def peer_by_identity(self, id_type: int, data: bytes) -> PeerConfig | None:
        return self._peers_by_id.get((id_type, data))

    def reqid(self, peer: str, local_ts: tuple[str, ...], remote_ts: tuple[str, ...]) -> int:
        key = (peer, local_ts, remote_ts)
        if key not in self._reqids:
            self._reqids[key] = len(self._reqids) + 1
        return self._reqids[key]

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            if spi != ZERO_SPI and spi not in self._sessions:
                return spi

    def new_child_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            # SPIs 1..255 are reserved by IANA (RFC 4303 §2.1); 0 means "no SA".
            if int.from_bytes(spi, "big") > 255 and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    def release_child_spi(self, spi_in: int) -> None:
        self._child_spis.discard(spi_in.to_bytes(4, "big"))

    def has_other_sa(self, sa: IkeSa) -> bool:
        name = sa.peer.name if sa.peer else None
        return any(s is not sa and s.established and s.peer is not None and s.peer.name == name
                   for s in self._sessions.values())

    def initial_contact(self, sa: IkeSa, now: float) -> None:
        """The peer says it has no other SA with us (it restarted): forget the old ones."""
        for s in list(self._sessions.values()):
            if (s is not sa and s.peer is not None and sa.peer is not None
                    and s.peer.name == sa.peer.name and s.state in (State.ESTABLISHED, State.REKEYED)):
                s.close(now, "replaced: peer sent INITIAL_CONTACT")

    def session_up(self, sa: IkeSa) -> None:
        self._drop_half_open(sa)
        if sa.init_key is None:
            return
        # Older half-open SAs from the same address and port are this initiator's earlier attempts
        # (it gave up on them and started again with a new SPI): they will never complete. Only
        # older by more than SUPERSEDE_AFTER_S: one initiator may open several IKE SAs to us at
        # once (per-network routing contexts: one per context, told apart by identity).
        addr = sa.init_key[1]
        for key, s in list(self._half_open.items()):
            if key[1] == addr and s.created <= sa.created - SUPERSEDE_AFTER_S:
                s.abandon(sa.established_at or sa.created, "superseded by an IKE SA from the same address")

    def adopt(self, sa: IkeSa) -> None:
        assert isinstance(sa, IkeSession)
        self._sessions[sa.local_spi] = sa

    def closed(self, sa: IkeSa) -> None:
        self._sessions.pop(sa.local_spi, None)
        self._drop_half_open(sa)
        if sa.init_key is not None and self._by_init.get(sa.init_key) is sa:
            del self._by_init[sa.init_key]

    # --- helpers --------------------------------------------------------------------------

    def _wake(self) -> None:
        if not self._woken and self.wakeup is not None:
            self._woken = True
            self.wakeup()

    def _of(self, peer: str, skip: tuple[State, ...]) -> list[IkeSession]:
        return [s for s in list(self._sessions.values())
                if s.peer is not None and s.peer.name == peer and s.state not in skip]

    def _established(self, peer: str) -> IkeSession:
        self.peer(peer)
        for s in self._sessions.values():
            if s.established and s.peer is not None and s.peer.name == peer:
                return s
        raise IkeError(f"no established IKE SA with peer {peer!r}")

    def _drop_half_open(self, sa: IkeSa) -> None:
        if sa.init_key is not None and self._half_open.get(sa.init_key) is sa:
            del self._half_open[sa.init_key]
