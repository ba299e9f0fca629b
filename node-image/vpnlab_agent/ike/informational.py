"""INFORMATIONAL (RFC 7296 §1.4): DELETE of child and IKE SAs, dead peer detection, private
notifies and extensions' payloads, both sides."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from vpnlab_agent.ike.codec import Delete, Message, Notify, Payload
from vpnlab_agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.events import NotifyReceived
from vpnlab_agent.ike.extension import MessageInfo
from vpnlab_agent.ike.ikesa import Child, IkeSa, State
from vpnlab_agent.ike.window import Request, RequestKind

INFO = ExchangeType.INFORMATIONAL


def on_request(sa: IkeSa, msg: Message, addr: tuple[str, int], now: float) -> list | None:
    out: list = []
    for d in msg.find_all(Delete):
        if d.protocol == ProtocolId.IKE:
            sa.close_after_response = ("deleted by peer", sa.state == State.REKEYED)
            return []
        if d.protocol == ProtocolId.ESP:
            ours = []
            for spi in d.spis:
                child = sa.child_by_out(spi)
                if child is not None:
                    ours.append(child.sa.spi_in.to_bytes(4, "big"))
                    sa.remove_child(child)
            if ours:
                out.append(Delete(ProtocolId.ESP, ours))
    if sa.peer is not None:
        for n in msg.find_all(Notify):
            if n.notify_type >= NotifyType.VPNLAB_PRIVATE_BASE and sa.peer_vendor:
                sa.host.emit(NotifyReceived(sa.peer.name, n.notify_type, n.data))
        exts = sa.host.extensions
        exts.received(sa.view(), MessageInfo(INFO, False), msg.payloads, now)
        out += exts.payloads(sa.view(), MessageInfo(INFO, True))
    return out


def refuse_temporarily(sa: IkeSa, msg: Message, addr: tuple[str, int], now: float) -> list:
    return [Notify(ProtocolId.NONE, b"", NotifyType.TEMPORARY_FAILURE)]


def send(sa: IkeSa, payloads: Sequence[Payload], now: float,
         done: Callable[[bool], None] | None = None) -> bool:
    """An INFORMATIONAL request of ours carrying these payloads; `done(ok)` once it is answered
    (True) or never will be (False: the IKE SA went away)."""
    def answered(m: Message, t: float) -> None:
        if sa.peer is not None:
            sa.host.extensions.received(sa.view(), MessageInfo(INFO, True), m.payloads, t)
        if done is not None:
            done(True)

    return sa.queue(INFO, list(payloads), answered, RequestKind.NOTIFY, now,
                    on_fail=(lambda: done(False)) if done is not None else None)


def dpd(sa: IkeSa, now: float) -> None:
    # Dead peer detection: an empty INFORMATIONAL; its response refreshes last_recv.
    sa.queue(INFO, [], lambda m, t: None, RequestKind.DPD, now)


def esp_seen(sessions: Iterable[IkeSa], last_in: Mapping[int, float], now: float) -> None:
    """The data plane's times of the last authentic ESP per inbound SPI: each counts as liveness
    of the child's IKE SA (RFC 7296 §2.4), so a busy tunnel sends no DPD checks. Only ESP that
    passed its ICV counts (a forger has no key); a time after `now` is none of ours (another clock)."""
    for s in sessions:
        for spi in s.children:
            t = last_in.get(spi)
            if t and s.last_esp < t <= now:
                s.last_esp = t


def delete_children(sa: IkeSa, kids: list[Child], now: float) -> None:
    """INFORMATIONAL DELETE for child SAs (make-before-break: called once the new one is up)."""
    spis = [c.sa.spi_in.to_bytes(4, "big") for c in kids if c.sa.spi_in in sa.children]
    if not spis:
        return
    for c in kids:
        sa.remove_child(c)
    sa.queue(INFO, [Delete(ProtocolId.ESP, spis)], lambda m, t: None, RequestKind.DELETE_CHILD, now)


def delete(sa: IkeSa, now: float, reason: str = "terminated") -> None:
    """Delete this IKE SA (and with it its children) with an INFORMATIONAL DELETE."""
    if sa.state in (State.CLOSED, State.DELETING):
        return
    if sa.state != State.ESTABLISHED:
        sa.close(now, reason)
        return
    sa.set_state(State.DELETING)
    sa.close_reason = reason
    # The outstanding request (if any) still completes first: window of one.
    for req in list(sa.window.queue):
        if req.on_fail is not None:
            req.on_fail()
    sa.window.queue.clear()
    sa.window.queue.append(Request(INFO, [Delete(ProtocolId.IKE, [])], lambda m, t: sa.close(t, reason),
                                   RequestKind.DELETE_IKE))
    sa.pump(now)
