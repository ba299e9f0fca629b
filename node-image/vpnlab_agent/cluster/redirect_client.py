"""The client side of RFC 5685 (an IKE extension): announce support, follow redirects, guard loops.

For the peers it is given (peer name -> the address it knows, e.g. a cluster's virtual address):
- our first IKE_SA_INIT carries REDIRECT_SUPPORTED; one that follows a redirect carries
  REDIRECTED_FROM (the gateway that redirected us) instead, as strongSwan does;
- a REDIRECT is followed in the IKE_SA_INIT response (only when its nonce data is our Ni: an
  unauthenticated message must prove it answers our request), in the IKE_AUTH response (after the
  gateway's AUTH verified) and in an INFORMATIONAL request on an established SA;
- loop guard (RFC 5685 §7): at most MAX_REDIRECTS in WINDOW_S per peer; beyond, a REDIRECT is ignored
  (in IKE_SA_INIT the attempt then fails and the owner's retry starts again at the known address).
  A redirect to a target that never answered is not a loop and is not counted: a member that is
  in its cluster's pool but deaf to IKE would otherwise lock its clients out for up to WINDOW_S;
- the owner's retries always connect to the configured address, so a redirect target that does
  not answer, or that dies later (DPD), sends the client back to the virtual address.
Sans-I/O: `now` comes with every hook.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vpnlab_agent.ike.codec import ParseError, Payload
from vpnlab_agent.ike.constants import ExchangeType, NotifyType
from vpnlab_agent.ike.extension import Extension, MessageInfo, SaView
from vpnlab_agent.ike import redirect as rfc5685

MAX_REDIRECTS = 5
WINDOW_S = 300.0


@dataclass
class RedirectStats:
    followed: int = 0
    refused_loop: int = 0  # over the loop guard
    refused_nonce: int = 0  # IKE_SA_INIT REDIRECT whose nonce data was not our Ni
    refused_bad: int = 0  # unparsable, or an FQDN (we have no resolver)
    last_target: dict[str, str] = field(default_factory=dict)


class RedirectClient(Extension):
    name = "redirect-client"
    init_notifies = frozenset({NotifyType.REDIRECT})

    def __init__(self, peers: dict[str, str], *, max_redirects: int = MAX_REDIRECTS,
                 window_s: float = WINDOW_S) -> None:
        self.peers = dict(peers)
        self.max_redirects, self.window_s = max_redirects, window_s
        self.stats = RedirectStats()
        self._history: dict[str, deque[float]] = {p: deque() for p in peers}
        self._redirected_to: dict[str, tuple[str, str]] = {}  # peer -> (target, redirected from)
        self._unanswered: dict[str, float] = {}  # peer -> when we followed a redirect its target never answered

    # --- what we send -----------------------------------------------------------------------

    def payloads(self, sa: SaView, msg: MessageInfo) -> list[Payload]:
        if not (msg.exchange == ExchangeType.IKE_SA_INIT and not msg.response and sa.initiator
                and sa.peer in self.peers):
            return []
        came = self._redirected_to.get(sa.peer)
        if came is not None and came[0] == sa.remote_addr[0]:
            return [rfc5685.redirected_from(rfc5685.Gateway.of(came[1]))]
        return [rfc5685.redirect_supported()]

    # --- what we get ------------------------------------------------------------------------

    def received(self, sa: SaView, msg: MessageInfo, payloads: list[Payload], now: float) -> None:
        if not sa.initiator and msg.exchange != ExchangeType.INFORMATIONAL:
            return
        if sa.peer is None or sa.peer not in self.peers:
            return
        came = self._redirected_to.get(sa.peer)
        if came is not None and came[0] == sa.remote_addr[0]:
            self._unanswered.pop(sa.peer, None)  # the target spoke (authenticated, or a REDIRECT)
        n = rfc5685.find(payloads, NotifyType.REDIRECT)
        if n is None:
            return
        if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.response:
            return
        if msg.exchange in (ExchangeType.IKE_AUTH,) and not msg.response:
            return
        if msg.exchange == ExchangeType.INFORMATIONAL and msg.response:
            return
        try:
            gw, nonce = rfc5685.parse_redirect(n)
        except ParseError:
            self.stats.refused_bad += 1
            return
        if msg.exchange == ExchangeType.IKE_SA_INIT and (not sa.nonce_i or nonce != sa.nonce_i):
            self.stats.refused_nonce += 1
            return
        if not gw.is_address:
            self.stats.refused_bad += 1
            return
        if not self._allowed(sa.peer, now):
            self.stats.refused_loop += 1
            return
        self.stats.followed += 1
        self.stats.last_target[sa.peer] = gw.value
        self._redirected_to[sa.peer] = (gw.value, sa.remote_addr[0])
        self._unanswered[sa.peer] = now
        self.api.reconnect(sa.peer, gw.value, now, reason=f"redirected to {gw.value}")

    def _allowed(self, peer: str, now: float) -> bool:
        q = self._history.setdefault(peer, deque())
        silent = self._unanswered.pop(peer, None)
        if silent is not None and silent in q:
            q.remove(silent)  # the last target never answered: that was no loop
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.max_redirects:
            return False
        q.append(now)
        return True

    def status(self) -> dict[str, object]:
        s = self.stats
        return {"followed": s.followed, "refused_loop": s.refused_loop, "refused_nonce": s.refused_nonce,
                "refused_bad": s.refused_bad, "targets": dict(s.last_target)}
