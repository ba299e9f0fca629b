"""The gateway side of RFC 5685 for a cluster's virtual address (an IKE extension).

Installed on the IKE endpoint that listens on the virtual address; only the VRRP master has that
address, so only the master's instance ever sees a client. For a client that announced
REDIRECT_SUPPORTED, `choose()` (the cluster service: the pool and the balancer) names the member
for it; another member's address goes back in a REDIRECT:
  init  in the IKE_SA_INIT response, stateless, with the client's Ni as nonce data (RFC 5685 §5);
  auth  in the IKE_AUTH response, after both AUTHs verified, without nonce (RFC 5685 §6).
When the master itself is the choice it keeps the client, but at its own address: the client is
redirected there like to any member, so its tunnel does not depend on who holds the virtual
address later (a VRRP move cannot take it away). A client that did not announce support, or one
arriving when no member is available, is served here on the virtual address: nobody is dropped.

A retransmitted IKE_SA_INIT gets the answer its first copy got (RFC 7296 §2.1), from a bounded
cache keyed on the initiator's SPI, address and nonce: choosing again would count a second pending
redirect for one client, on a member it never reaches, and tilt a burst (seen as 12/9/9 of 30 when
a loaded master answered later than the client's 0.5 s retransmission).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from vpnlab_agent.cluster.status import MemberStatus
from vpnlab_agent.ike import redirect as rfc5685
from vpnlab_agent.ike.codec import Notify, Payload
from vpnlab_agent.ike.constants import NotifyType
from vpnlab_agent.ike.extension import Admission, Extension, InitRequest, ReplyWith, SaView

# An initiator retransmits IKE_SA_INIT for 0.5 + 1 + 2 + 4 + 8 s (RFC 7296 §2.1 backoff, 5 tries).
ANSWER_TTL_S = 16.0
MAX_ANSWERS = 4096  # a flood of new SPIs evicts the oldest answers; it cannot grow memory


@dataclass
class GatewayStats:
    redirected: int = 0  # to another member
    to_self: int = 0  # the master was the least loaded: redirected to its own address
    unsupported: int = 0  # served here: no REDIRECT_SUPPORTED
    none_available: int = 0
    retransmits: int = 0  # a retransmitted IKE_SA_INIT answered from the cache, not chosen again


class RedirectGateway(Extension):
    name = "redirect-gateway"
    init_notifies = frozenset({NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM})

    def __init__(self, own: str, where: str, choose: Callable[[], MemberStatus | None],
                 served_here: Callable[[], None] = lambda: None) -> None:
        if where not in ("init", "auth"):
            raise ValueError(f"redirect point {where!r} (init or auth)")
        self.own, self.where, self.choose = own, where, choose
        self.served_here = served_here  # a client we keep on the virtual address: load on us too
        self.stats = GatewayStats()
        # (SPIi, address, Ni) -> (expires, the REDIRECT we answered with), oldest first
        self._answers: OrderedDict[tuple[bytes, tuple[str, int], bytes], tuple[float, ReplyWith]] = OrderedDict()

    def _target(self, supported: bool) -> MemberStatus | None:
        """The member to redirect to, or None to serve the client here."""
        if not supported:
            self.stats.unsupported += 1
            self.served_here()
            return None
        st = self.choose()
        if st is None:
            self.stats.none_available += 1
            return None
        if st.name == self.own:
            self.stats.to_self += 1
        else:
            self.stats.redirected += 1
        return st

    def admit_init(self, req: InitRequest, now: float) -> Admission | None:
        if self.where != "init":
            return None
        # A client coming back from a redirect (REDIRECTED_FROM) supports it too (RFC 5685 §5).
        supported = any(n.notify_type in (NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM)
                        for n in req.notifies)
        while self._answers and next(iter(self._answers.values()))[0] <= now:
            self._answers.popitem(last=False)
        key = (req.spi_i, req.addr, req.nonce)
        if supported and (hit := self._answers.get(key)) is not None:
            self.stats.retransmits += 1
            return hit[1]
        st = self._target(supported)
        if st is None:
            return None  # served here: the endpoint's half-open SA answers its retransmissions
        answer = ReplyWith((rfc5685.redirect(rfc5685.Gateway.of(st.address), req.nonce),))
        self._answers[key] = (now + ANSWER_TTL_S, answer)
        if len(self._answers) > MAX_ANSWERS:
            self._answers.popitem(last=False)
        return answer

    def admit_auth(self, sa: SaView, payloads: list[Payload], now: float) -> list[Notify] | None:
        if self.where != "auth":
            return None
        supported = bool({NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM} & set(sa.notifies))
        st = self._target(supported)
        if st is None:
            return None
        return [rfc5685.redirect(rfc5685.Gateway.of(st.address))]

    def status(self) -> dict[str, int]:
        return dict(self.stats.__dict__)
