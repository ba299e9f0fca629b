"""Many IKE SAs behind one address: dispatch, responder admission (cookies), the local API.

Sans-I/O, in the aioquic style. Inputs: API calls (`connect`, `rekey_child`, `rekey_ike`,
`terminate`, `send_notify`), `receive_datagram(data, addr, local_port, now)` and
`handle_timer(now)`. Outputs: `datagrams_to_send(now)`, `get_timer()`, `next_event()`.
Datagrams carry no non-ESP marker: the I/O layer strips and adds it on port 4500.

A new IKE_SA_INIT request is checked here, before any state is kept: proposal, KE group and, when
more than `cookie_threshold` SAs are half-open, a stateless COOKIE (RFC 7296 §2.6). Everything else
is routed by our SPI to its `IkeSession`.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections import deque
from collections.abc import Callable
from typing import Any

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import crypto, proposals
from vpnlab_agent.ike.codec import (
    KE,
    SA,
    Header,
    IntegrityError,
    Message,
    Nonce,
    Notify,
    ParseError,
    Proposal,
    decode,
    decode_header,
    encode,
)
from vpnlab_agent.ike.constants import VENDOR_ID, ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.events import Event
from vpnlab_agent.ike.policy import identity
from vpnlab_agent.ike.proposals import dh_group
from vpnlab_agent.ike.session import IkeSession, State
from vpnlab_agent.log import LogLines

IKE_PORT = 500
NATT_PORT = 4500
_ZERO_SPI = bytes(8)
# Bounds on what a flood of peers can make us hold.
DEFAULT_COOKIE_THRESHOLD = 50
DEFAULT_MAX_HALF_OPEN = 2000
MAX_EVENTS = 100_000
MAX_OUTBOX = 10_000
MAX_LOG_LINES = 1000


class IkeError(Exception):
    """A local API call that cannot be done (unknown peer, no IKE SA); one-line message."""


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
    ) -> None:
        self.config = config
        self.local_addr = local_addr
        self.force_encap = force_encap
        self.vendor_id = vendor_id
        self.rng = rng
        self.psk = config.psk.encode()
        self.cookie_threshold = cookie_threshold
        self.max_half_open = max_half_open
        self.ike_proposals: list[Proposal] = proposals.ike_proposals_from_config(list(config.ike_proposals))
        self.esp_proposals: list[Proposal] = proposals.esp_proposals_from_config(list(config.esp_proposals))
        self._peers_by_id = {identity(p.remote_id): p for p in config.peers}
        self._dynamic: set[str] = set()  # peers added at run time (add_peer), removable
        self._sessions: dict[bytes, IkeSession] = {}  # by our SPI
        self._half_open: dict[tuple[bytes, tuple[str, int]], IkeSession] = {}  # by (SPIi, peer addr)
        # Every SA we answered IKE_SA_INIT for, so a late retransmission of that request is
        # recognised (and ignored) rather than taken for a new SA costing another DH.
        self._by_init: dict[tuple[bytes, tuple[str, int]], IkeSession] = {}
        self._out: deque[tuple[bytes, tuple[str, int], int]] = deque(maxlen=MAX_OUTBOX)
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._reqids: dict[tuple[str, tuple[str, ...], tuple[str, ...]], int] = {}
        self._child_spis: set[bytes] = set()
        self._cookie_secret = rng(32)
        self.log_lines: deque[str] = deque(maxlen=MAX_LOG_LINES)
        self.internal_errors = 0  # bugs caught at the boundary; tests assert it stays 0

    # --- API ------------------------------------------------------------------------------

    def peer(self, name: str) -> PeerConfig:
        for p in self.config.peers:
            if p.name == name:
                return p
        raise IkeError(f"unknown IKE peer {name!r} (peers: {', '.join(p.name for p in self.config.peers) or 'none'})")

    def connect(self, peer_name: str, now: float) -> None:
        """Start IKE_SA_INIT towards a configured peer, unless an IKE SA to it exists or is underway."""
        peer = self.peer(peer_name)
        if peer.address is None:
            raise IkeError(f"peer {peer_name!r} has no address; it can only initiate to us")
        if any(s.peer is not None and s.peer.name == peer.name and s.state not in (State.CLOSED, State.REKEYED, State.DELETING)
               for s in self._sessions.values()):
            return
        s = IkeSession(self, initiator=True, local_spi=self.new_ike_spi(), remote=(peer.address, IKE_PORT),
                       local_port=IKE_PORT, now=now, peer=peer)
        self._sessions[s.local_spi] = s
        s.start(now)

    def add_peer(self, peer: PeerConfig) -> None:
        """Add (or replace) a dynamic peer at run time: the Advanced Mesh shortcut peers."""
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

    def is_dynamic(self, name: str) -> bool:
        return name in self._dynamic

    def remove_peer(self, name: str, now: float) -> None:
        """Delete the IKE SAs with a dynamic peer (INFORMATIONAL DELETE), then forget the peer."""
        if name not in self._dynamic:
            raise IkeError(f"peer {name!r} is not a dynamic peer")
        for s in list(self._sessions.values()):
            if s.peer is not None and s.peer.name == name and s.state not in (State.CLOSED, State.DELETING):
                s.delete(now, "shortcut removed")
        self._dynamic.discard(name)
        self.config = dataclasses.replace(self.config, peers=tuple(p for p in self.config.peers if p.name != name))
        self._peers_by_id = {identity(p.remote_id): p for p in self.config.peers}

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
        for s in list(self._sessions.values()):
            if s.peer is not None and s.peer.name == peer:
                s.delete(now, "terminated")

    def terminate_all(self, now: float) -> None:
        for s in list(self._sessions.values()):
            s.delete(now, "terminated")

    def send_notify(self, peer: str, notify_type: int, data: bytes, now: float) -> None:
        """A private notify in an INFORMATIONAL exchange; only to peers that sent our Vendor ID."""
        if not NotifyType.VPNLAB_PRIVATE_BASE <= notify_type <= 0xFFFF:
            raise IkeError(f"notify type {notify_type} is not in the private range")
        s = self._established(peer)
        if not s.peer_vendor:
            raise IkeError(f"peer {peer!r} did not announce the vpnlab Vendor ID")
        if not s.send_notify(notify_type, data, now):
            raise IkeError(f"too many requests queued for peer {peer!r}")

    def is_up(self, peer: str) -> bool:
        return any(s.established and s.peer is not None and s.peer.name == peer for s in self._sessions.values())

    # --- input ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: tuple[str, int], local_port: int, now: float) -> None:
        """One UDP payload from the peer at addr to our local_port. Never raises on peer input."""
        try:
            self._receive(data, addr, local_port, now)
        except Exception as e:  # noqa: BLE001 - a bug here must not take the agent down
            self.internal_errors += 1
            self.log(f"internal error on datagram from {addr[0]}:{addr[1]}: {type(e).__name__}: {e}")

    def _receive(self, data: bytes, addr: tuple[str, int], local_port: int, now: float) -> None:
        try:
            hdr = decode_header(data)
        except ParseError:
            return
        if hdr.exchange == ExchangeType.IKE_SA_INIT and not hdr.response and hdr.spi_r == _ZERO_SPI:
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
                    self.internal_errors += 1
                    self.log(f"internal error in timer of {s.peer_name}: {type(e).__name__}: {e}")

    # --- output ---------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple[str, int], int]]:
        out = list(self._out)
        self._out.clear()
        return out

    def get_timer(self) -> float | None:
        times = [t for s in self._sessions.values() if (t := s.next_deadline()) is not None]
        return min(times) if times else None

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def status(self, now: float) -> dict[str, Any]:
        ike, children = [], []
        for s in self._sessions.values():
            ike.append(s.status(now))
            for c in s.children.values():
                sa = c.sa
                children.append({
                    "peer": sa.name,
                    "reqid": sa.reqid,
                    "local_ts": list(sa.local_ts),
                    "remote_ts": list(sa.remote_ts),
                    "spi_in": f"{sa.spi_in:08x}",
                    "spi_out": f"{sa.spi_out:08x}",
                    "algorithm": f"{sa.algorithm.cipher}-{sa.algorithm.key_bits}"
                                 + (f"-{sa.algorithm.integ}" if sa.algorithm.integ else ""),
                    "encap": sa.encap,
                    "age_s": round(now - c.created, 1),
                    "state": "rekeyed" if c.expire_at is not None else "installed",
                })
        return {"ike_sas": ike, "child_sas": children, "half_open": len(self._half_open)}

    # --- responder admission --------------------------------------------------------------

    def _init_request(self, data: bytes, hdr: Header, addr: tuple[str, int], local_port: int, now: float) -> None:
        existing = self._by_init.get((hdr.spi_i, addr))
        if existing is not None:
            existing.receive(data, hdr, addr, local_port, now)  # a retransmission: same answer
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
        nonce = msg.find(Nonce)
        if len(self._half_open) >= self.cookie_threshold:
            want = crypto.cookie(self._cookie_secret, nonce.data if nonce else b"", addr[0], hdr.spi_i)
            first = msg.payloads[0] if msg.payloads else None
            if not (isinstance(first, Notify) and first.notify_type == NotifyType.COOKIE
                    and hmac.compare_digest(first.data, want)):
                self._refuse_init(hdr.spi_i, addr, local_port, NotifyType.COOKIE, want)
                return
        sa, ke = msg.find(SA), msg.find(KE)
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
        """Stateless IKE_SA_INIT answer carrying one Notify (COOKIE or an error), SPIr zero."""
        msg = Message(spi_i, _ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True,
                      [Notify(ProtocolId.NONE, b"", notify, data)])
        self._send(encode(msg), addr, local_port)

    # --- services for sessions -------------------------------------------------------------

    def _send(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        self._out.append((data, addr, local_port))

    def _emit(self, event: Event) -> None:
        self._events.append(event)

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
            if spi != _ZERO_SPI and spi not in self._sessions:
                return spi

    def new_child_spi(self) -> bytes:
        while True:
            spi = self.rng(4)
            # SPIs 1..255 are reserved by IANA (RFC 4303 §2.1); 0 means "no SA".
            if int.from_bytes(spi, "big") > 255 and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    def has_other_sa(self, session: IkeSession) -> bool:
        name = session.peer.name if session.peer else None
        return any(s is not session and s.established and s.peer is not None and s.peer.name == name
                   for s in self._sessions.values())

    def initial_contact(self, session: IkeSession, now: float) -> None:
        """The peer says it has no other SA with us (it restarted): forget the old ones."""
        for s in list(self._sessions.values()):
            if (s is not session and s.peer is not None and session.peer is not None
                    and s.peer.name == session.peer.name and s.state in (State.ESTABLISHED, State.REKEYED)):
                s._close(now, "replaced: peer sent INITIAL_CONTACT")

    def _session_up(self, session: IkeSession) -> None:
        self._drop_half_open(session)
        if session.init_key is None:
            return
        # Older half-open SAs from the same address and port are this initiator's earlier attempts
        # (it gave up on them and started again with a new SPI): they will never complete.
        addr = session.init_key[1]
        for key, s in list(self._half_open.items()):
            if key[1] == addr and s.created <= session.created:
                s.abandon(session.established_at or session.created, "superseded by an IKE SA from the same address")

    def _established(self, peer: str) -> IkeSession:
        self.peer(peer)
        for s in self._sessions.values():
            if s.established and s.peer is not None and s.peer.name == peer:
                return s
        raise IkeError(f"no established IKE SA with peer {peer!r}")

    def _drop_half_open(self, session: IkeSession) -> None:
        if session.init_key is not None and self._half_open.get(session.init_key) is session:
            del self._half_open[session.init_key]

    def _adopt(self, session: IkeSession) -> None:
        self._sessions[session.local_spi] = session

    def _closed(self, session: IkeSession) -> None:
        self._sessions.pop(session.local_spi, None)
        self._drop_half_open(session)
        if session.init_key is not None and self._by_init.get(session.init_key) is session:
            del self._by_init[session.init_key]

    def release_child_spi(self, spi_in: int) -> None:
        self._child_spis.discard(spi_in.to_bytes(4, "big"))
