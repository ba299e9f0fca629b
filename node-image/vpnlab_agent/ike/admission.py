"""Admission of a new IKE_SA_INIT request (responder), before any state is kept.

A chain of policies decides: the COOKIE policy (RFC 7296 §2.6) first, then the extensions'
`admit_init`; the first decision wins, and without one the request is answered. A decision other
than Answer is sent statelessly: one IKE_SA_INIT response with SPIr zero and notifies only.
"""

from __future__ import annotations

import hmac

from vpnlab_agent.ike import crypto
from vpnlab_agent.ike.codec import Message, Notify, Nonce, encode
from vpnlab_agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.extension import INIT_NOTIFIES, Admission, AdmissionPolicy, Answer, AskCookie, InitRequest

ZERO_SPI = bytes(8)


class CookiePolicy:
    """Above `threshold` half-open SAs, only requests that return our stateless cookie get an answer."""

    def __init__(self, secret: bytes, threshold: int) -> None:
        self.secret = secret
        self.threshold = threshold

    def admit(self, req: InitRequest, now: float) -> Admission | None:
        if req.half_open < self.threshold:
            return None
        want = crypto.cookie(self.secret, req.nonce, req.addr[0], req.spi_i)
        first = req.notifies[0] if req.notifies else None
        # RFC 7296 §2.6: the COOKIE notify comes first in the request.
        if (first is not None and first.notify_type == NotifyType.COOKIE and req.cookie_first
                and hmac.compare_digest(first.data, want)):
            return None
        return AskCookie(want)


def init_request(msg: Message, addr: tuple[str, int], local_port: int, half_open: int, established: int) -> InitRequest:
    nonce = msg.find(Nonce)
    first = msg.payloads[0] if msg.payloads else None
    cookie_first = isinstance(first, Notify) and first.notify_type == NotifyType.COOKIE
    wanted = INIT_NOTIFIES | {NotifyType.COOKIE}
    notifies = tuple(n for n in msg.find_all(Notify) if n.notify_type in wanted)
    if cookie_first:  # the first payload's COOKIE leads, whatever else there is
        assert isinstance(first, Notify)
        notifies = (first, *(n for n in notifies if n is not first))
    return InitRequest(addr, local_port, msg.spi_i, nonce.data if nonce else b"", notifies, half_open,
                       established, cookie_first)


def decide(policies: list[AdmissionPolicy], req: InitRequest, now: float) -> Admission:
    for p in policies:
        got = p.admit(req, now)
        if got is not None:
            return got
    return Answer()


def stateless_answer(spi_i: bytes, notifies: list[Notify]) -> bytes:
    """IKE_SA_INIT response carrying only notifies (COOKIE, an error, REDIRECT), SPIr zero."""
    return encode(Message(spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True, list(notifies)))


def notify(notify_type: int, data: bytes = b"") -> Notify:
    return Notify(ProtocolId.NONE, b"", notify_type, data)
