"""The message-ID windows of one IKE SA (RFC 7296 §2.3), window size one each way.

Ours: a bounded queue of requests, one outstanding, retransmitted with exponential backoff (§2.1).
The peer's: the next message ID we expect, and the last response we gave, to answer a
retransmitted request without processing it twice.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.ike.codec import Message

# Retransmission (RFC 7296 §2.1): first timeout, doubled after each try, at most this many sends.
RETRANSMIT_TIMEOUT = 0.5
RETRANSMIT_TRIES = 5
# IKE_SA_INIT to a gateway we were redirected to: it gives up after 0.5 + 1 + 2 + 4 s (not 15.5),
# and the owner goes back to the address it was configured with (RFC 5685: a dead target).
REDIRECTED_INIT_TRIES = 4

# Requests waiting behind the outstanding one; more than this means something is badly wrong.
MAX_QUEUED_REQUESTS = 16


class RequestKind(enum.Enum):
    INIT = "init"
    AUTH = "auth"
    REKEY_CHILD = "rekey-child"
    REKEY_IKE = "rekey-ike"
    DELETE_CHILD = "delete-child"
    DELETE_IKE = "delete-ike"
    NOTIFY = "notify"  # an INFORMATIONAL carrying an extension's or the owner's payloads
    DPD = "dpd"


# Queued requests an IKE rekey hands to the new IKE SA (the rest are rekeys and DPD, redone there).
CARRIED_OVER = (RequestKind.DELETE_CHILD, RequestKind.NOTIFY)

OnResponse = Callable[[Message, float], None]


@dataclass
class Request:
    """One request of ours: built when queued, numbered and encoded when it goes out."""

    exchange: int
    payloads: list
    on_response: OnResponse
    kind: RequestKind
    mid: int = -1
    data: bytes = b""  # the message (the first fragment, RFC 7383)
    frags: list[bytes] = field(default_factory=list)  # every fragment, when it went out in several
    tries: int = 0
    next_at: float = 0.0
    timeout: float = RETRANSMIT_TIMEOUT
    child: Any = None  # the child SA a queued rekey is for
    on_fail: Callable[[], None] | None = None  # the request will never be answered (SA gone)


class RequestWindow:
    """Our side: queue → one outstanding request. `encode(req)` numbers and encodes a request when
    it goes out (one datagram, or its RFC 7383 fragments); `send(datagrams)` puts them on the wire,
    every fragment again on each retransmission."""

    def __init__(self, encode: Callable[[Request], list[bytes]], send: Callable[[list[bytes]], None]) -> None:
        self.encode = encode
        self.send = send
        self.my_mid = 0
        self.pending: Request | None = None
        self.queue: deque[Request] = deque()
        # Tries of a liveness check, RETRANSMIT_TIMEOUT apart without backoff, before the peer is
        # declared dead (IkeConfig.dpd_retries); None: the usual schedule (15.5 s).
        self.dpd_tries: int | None = None
        self.init_tries: int | None = None  # tries of IKE_SA_INIT (None: RETRANSMIT_TRIES)

    def add(self, req: Request, now: float) -> bool:
        if len(self.queue) >= MAX_QUEUED_REQUESTS:
            return False
        self.queue.append(req)
        self.pump(now)
        return True

    def pump(self, now: float) -> None:
        """Send the next queued request if none is outstanding (window size 1)."""
        if self.pending is not None or not self.queue:
            return
        req = self.queue.popleft()
        req.mid = self.my_mid
        self.my_mid += 1
        datagrams = self.encode(req)
        req.data, req.frags = datagrams[0], datagrams if len(datagrams) > 1 else []
        self.transmit(req, now)

    def transmit(self, req: Request, now: float) -> None:
        req.tries = 1
        req.timeout = RETRANSMIT_TIMEOUT
        req.next_at = now + req.timeout
        self.pending = req
        self.send(req.frags or [req.data])

    def take_pending(self) -> Request | None:
        req, self.pending = self.pending, None
        return req

    def has(self, kind: RequestKind) -> bool:
        return (self.pending is not None and self.pending.kind == kind) or any(r.kind == kind for r in self.queue)

    def retransmit_due(self, now: float) -> Request | None:
        """Resend the outstanding request if its timer ran out. Returns it when it has used up its
        tries instead (the caller gives up on the peer); None otherwise."""
        req = self.pending
        if req is None or now < req.next_at:
            return None
        fast = req.kind == RequestKind.DPD and self.dpd_tries is not None
        limit = self.init_tries if req.kind == RequestKind.INIT and self.init_tries else RETRANSMIT_TRIES
        if req.tries >= (self.dpd_tries if fast else limit):  # type: ignore[operator]
            self.pending = None
            return req
        req.tries += 1
        if not fast:
            req.timeout *= 2
        req.next_at = now + req.timeout
        self.send(req.frags or [req.data])
        return None

    def deadline(self) -> float | None:
        return self.pending.next_at if self.pending is not None else None

    @property
    def idle(self) -> bool:
        return self.pending is None and not self.queue

    def clear(self) -> list[Request]:
        """Forget every request (the SA is closing); returns them so their owners can be told."""
        gone = ([self.pending] if self.pending is not None else []) + list(self.queue)
        self.pending = None
        self.queue.clear()
        return gone
