"""One IKE SA (RFC 7296), initiator or responder: where its messages and timers go.

Sans-I/O: a session is fed decoded-header datagrams and `now`, and pushes datagrams and events to
its endpoint through `SessionHost`. What a state accepts is `TRANSITIONS`, the one table of
(state, exchange, response?) → handler; anything not in it is dropped. The handlers live in the
modules of their exchange (handshake, children, rekey, informational), the state in ikesa.py and
our request window in window.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from vpnlab_agent.ike import fragment, handshake, informational, rekey
from vpnlab_agent.ike.codec import (Header, IntegrityError, Message, Notify, ParseError, Payload, Proposal, decode,
                                    decode_inner)
from vpnlab_agent.ike.constants import NATT_PORT, ExchangeType, NotifyType, PayloadType, ProtocolId
from vpnlab_agent.ike.events import DEAD
from vpnlab_agent.ike.ikesa import HALF_OPEN_TIMEOUT, Child, IkeSa, ProtocolFailure, State
from vpnlab_agent.ike.window import RETRANSMIT_TRIES, RequestKind

__all__ = ["IkeSession", "State", "RETRANSMIT_TRIES", "TRANSITIONS"]

Handler = Callable[[IkeSa, Message, tuple[str, int], float], Any]


class IkeSession(IkeSa):
    # --- API (called by the endpoint) -----------------------------------------------------

    def start(self, now: float) -> None:
        handshake.start(self, now)

    def respond_init(self, msg: Message, raw: bytes, addr: tuple[str, int], local_port: int,
                     chosen: Proposal, now: float) -> None:
        handshake.respond_init(self, msg, raw, addr, local_port, chosen, now)

    def rekey_child(self, child: Child, now: float) -> bool:
        return rekey.rekey_child(self, child, now)

    def rekey_ike(self, now: float) -> bool:
        return rekey.rekey_ike(self, now)

    def delete(self, now: float, reason: str = "terminated") -> None:
        informational.delete(self, now, reason)

    def delete_children(self, kids: list[Child], now: float) -> None:
        informational.delete_children(self, kids, now)

    def send_informational(self, payloads: Sequence[Payload], now: float,
                           done: Callable[[bool], None] | None = None) -> bool:
        return informational.send(self, payloads, now, done)

    def send_notify(self, notify_type: int, data: bytes, now: float) -> bool:
        return self.send_informational([Notify(ProtocolId.NONE, b"", notify_type, data)], now)

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
            pending = self.window.pending
            if pending is None or hdr.message_id != pending.mid:
                return  # late duplicate or a response to something we never asked
        elif hdr.message_id == self.peer_mid - 1 and self.last_resp and self.last_resp[0] == hdr.message_id:
            # A retransmitted request: resend the response we already gave (RFC 7296 §2.1),
            # but only if it is authentic; a fragmented one only for its first fragment, so a
            # retransmission of n fragments does not cost n responses (RFC 7383 §2.6.1).
            if hdr.next_payload == PayloadType.SKF:
                frag = fragment.verify_only(data, hdr, self.sk_in)
                if frag is None or frag.number != 1:
                    return
            else:
                try:
                    decode(data, self.sk_in)
                except IntegrityError:
                    return
                except ParseError as e:
                    if not e.authentic:
                        return
            self.send_all(self.last_resp[1], addr, local_port)
            return
        elif hdr.message_id != self.peer_mid:
            return  # outside the window of one
        try:
            msg = self._decode(data, hdr)
        except IntegrityError:
            return
        except ParseError as e:
            if e.authentic and not hdr.response and e.notify_type != NotifyType.INVALID_SYNTAX:
                # Authentic but with an unknown critical payload: answer with the error (§2.5).
                # Never for a fault outside the SK payload: a forger would move our window.
                self.respond(hdr.exchange, hdr.message_id,
                             [Notify(ProtocolId.NONE, b"", e.notify_type, e.data)], addr, local_port)
            return
        if msg is None:
            return  # a fragment kept (or dropped); the message is not complete
        self.handle(msg, data, hdr, addr, local_port, now)

    def _decode(self, data: bytes, hdr: Header) -> Message | None:
        """The message, or None while its RFC 7383 fragments are still coming (or one was dropped)."""
        if hdr.next_payload != PayloadType.SKF:
            return decode(data, self.sk_in)
        stats = self.host.fragment_stats
        if self.fragment_limit() is None:
            stats.unsolicited += 1  # we never announced support to this peer (or it never did)
            return None
        try:
            frag = fragment.open_fragment(data, hdr, self.sk_in)
        except (ValueError, IntegrityError):
            stats.invalid += 1
            return None
        done = self.reassembly[hdr.response].add(hdr.message_id, frag)
        return None if done is None else decode_inner(hdr, done[1], done[0])

    def handle(self, msg: Message, data: bytes, hdr: Header, addr: tuple[str, int], local_port: int,
               now: float) -> None:
        """An authenticated message in our window: to the handler of its (state, exchange)."""
        if msg.initiator == self.initiator:
            return  # reflected message: the I flag says it came from our own side
        self.last_recv = now
        if local_port == NATT_PORT and (addr != self.remote or self.local_port != NATT_PORT):
            # The peer floated to 4500 or its NAT mapping changed (RFC 7296 §2.23).
            self.move_peer(addr)
        handler = TRANSITIONS.get((self.state, hdr.exchange, hdr.response))
        if handler is None:
            return
        if hdr.response:
            self.last_raw = data
            handler(self, msg, addr, now)
            return
        self.request = (msg, data, hdr, addr, local_port, now)
        try:
            out = handler(self, msg, addr, now)
        except ProtocolFailure as e:
            out = [Notify(ProtocolId.NONE, b"", e.notify, e.data)]
            self.host.log(f"{self.peer_name}: refused {ExchangeType(hdr.exchange).name}: {e}")
        except Exception as e:  # noqa: BLE001 - peer input must never take the agent down
            self.host.internal_error(f"{self.peer_name}: internal error handling request: {type(e).__name__}: {e}")
            out = [Notify(ProtocolId.NONE, b"", NotifyType.TEMPORARY_FAILURE)]
        if out is not None and self.sk_out is not None:
            self.respond(hdr.exchange, hdr.message_id, out, addr, local_port)
        self._after_response(now)

    def _after_response(self, now: float) -> None:
        if self.close_after_response is not None:
            reason, quiet = self.close_after_response
            self.close_after_response = None
            self.close(now, reason, quiet=quiet)
        else:
            self.pump(now)
        self._pump_successor(now)

    def _pump_successor(self, now: float) -> None:
        """After an IKE rekey, requests carried over to the new IKE SA go out once the exchange
        that created it is complete (as responder: our answer is sent)."""
        if self.successor is not None:
            self.successor.pump(now)

    def _receive_init(self, data: bytes, hdr: Header, addr: tuple[str, int], local_port: int, now: float) -> None:
        if not hdr.response:
            # Another IKE_SA_INIT request with this SPIi from this address (the endpoint routed it here).
            if self.state == State.HALF_OPEN:
                handshake.repeat_init_response(self, data, addr, local_port)
            return
        if self.state != State.INIT_SENT or self.window.pending is None or hdr.message_id != 0:
            return
        try:
            msg = decode(data)
        except (ParseError, IntegrityError):
            return
        if msg.initiator or handshake.stale_init_answer(self, msg):
            return
        handler = TRANSITIONS.get((self.state, hdr.exchange, hdr.response))
        if handler is None:
            return
        self.last_recv = now
        self.last_raw = data
        handler(self, msg, addr, now)

    # --- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        times: list[float] = []
        if (t := self.window.deadline()) is not None:
            times.append(t)
        if self.state == State.HALF_OPEN:
            times.append(self.created + HALF_OPEN_TIMEOUT)
        elif self.state == State.ESTABLISHED:
            if self.window.idle:
                times.append(self.alive_at + self.host.config.dpd_interval_s)
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
        elif self.state in (State.REKEYED, State.REFUSED) and self.linger_until is not None:
            times.append(self.linger_until)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        gave_up = self.window.retransmit_due(now)
        if gave_up is not None:
            if gave_up.on_fail is not None:
                gave_up.on_fail()
            if gave_up.kind == RequestKind.DELETE_IKE:
                self.close(now, self.close_reason, quiet=self.state == State.REKEYED)
            else:
                self.close(now, DEAD)
            return
        if self.state == State.HALF_OPEN and now >= self.created + HALF_OPEN_TIMEOUT:
            self.close(now, "half-open IKE SA timed out", quiet=True)
            return
        if (self.state in (State.REKEYED, State.REFUSED) and self.linger_until is not None
                and now >= self.linger_until):
            self.close(now, None, quiet=True)
            return
        if self.state != State.ESTABLISHED:
            return
        if self.hard_at is not None and now >= self.hard_at:
            self.delete(now, "IKE SA lifetime expired")
            return
        if self.window.idle and now >= self.alive_at + self.host.config.dpd_interval_s:
            informational.dpd(self, now)
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = self.retry_time(now)  # if it fails, try again a bit later
            self.rekey_ike(now)
        for child in list(self.children.values()):
            if (child.expire_at is not None and now >= child.expire_at) or now >= child.hard_at:
                self.delete_children([child], now)
            elif child.expire_at is None and not child.rekeying and now >= child.rekey_at:
                child.rekey_at = self.retry_time(now)
                self.rekey_child(child, now)


# --- responses to our requests ----------------------------------------------------------------


def to_pending(sa: IkeSa, msg: Message, addr: tuple[str, int], now: float) -> None:
    """A response (already matched to our outstanding request's message ID) goes to that
    request's own callback; then the next queued request may go out."""
    req = sa.window.take_pending()
    assert req is not None
    req.on_response(msg, now)
    sa.pump(now)
    if sa.successor is not None:
        sa.successor.pump(now)


def rekey_response_while_deleting(sa: IkeSa, msg: Message, addr: tuple[str, int], now: float) -> None:
    """A rekey answered after delete(). A child rekey is moot: deleting the IKE SA takes the
    peer's new child with it. An IKE rekey is completed so that the new IKE SA is deleted too;
    otherwise the peer would keep it, with all the children, until its DPD gave up."""
    req = sa.window.pending
    assert req is not None
    if req.kind != RequestKind.REKEY_IKE:
        sa.window.take_pending()
        sa.pump(now)
        return
    reason = sa.close_reason or "terminated"
    to_pending(sa, msg, addr, now)
    if sa.successor is not None:
        informational.delete(sa.successor, now, reason)


_INIT, _AUTH = ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH
_CCS, _INFO = ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL
# The one table: (state, exchange, is_response) → handler. Requests return the response payloads;
# responses are routed to the outstanding request's own callback. Absent → dropped. Which state a
# handler may move to is ikesa.STATE_CHANGES.
TRANSITIONS: dict[tuple[State, int, bool], Handler] = {
    (State.INIT_SENT, _INIT, True): to_pending,
    (State.HALF_OPEN, _AUTH, False): handshake.on_auth_request,
    (State.AUTH_SENT, _AUTH, True): to_pending,
    (State.ESTABLISHED, _CCS, False): rekey.on_create_child_request,
    (State.ESTABLISHED, _CCS, True): to_pending,
    (State.ESTABLISHED, _INFO, False): informational.on_request,
    (State.ESTABLISHED, _INFO, True): to_pending,
    (State.REFUSED, _INFO, False): informational.on_request,  # the peer's DELETE after our refusal
    (State.REKEYED, _CCS, False): informational.refuse_temporarily,
    (State.REKEYED, _CCS, True): to_pending,
    (State.REKEYED, _INFO, False): informational.on_request,
    (State.REKEYED, _INFO, True): to_pending,
    (State.DELETING, _INFO, False): informational.on_request,
    (State.DELETING, _INFO, True): to_pending,
    (State.DELETING, _CCS, False): informational.refuse_temporarily,
    (State.DELETING, _CCS, True): rekey_response_while_deleting,
}
