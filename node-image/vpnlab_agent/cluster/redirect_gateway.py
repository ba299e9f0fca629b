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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vpnlab_agent.cluster.status import MemberStatus
from vpnlab_agent.ike import redirect as rfc5685
from vpnlab_agent.ike.codec import Notify, Payload
from vpnlab_agent.ike.constants import NotifyType
from vpnlab_agent.ike.extension import Admission, Extension, InitRequest, ReplyWith, SaView


@dataclass
class GatewayStats:
    redirected: int = 0  # to another member
    to_self: int = 0  # the master was the least loaded: redirected to its own address
    unsupported: int = 0  # served here: no REDIRECT_SUPPORTED
    none_available: int = 0


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
        st = self._target(supported)
        if st is None:
            return None
        return ReplyWith((rfc5685.redirect(rfc5685.Gateway.of(st.address), req.nonce),))

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
