"""The hub side of Advanced Mesh VPN, sans-I/O: relay a branch's shortcut request to the branch that
owns the wanted subnet, and refusals back.

Only between authenticated IKE SAs: a request counts only when it arrives in the IKE SA of the very
branch it names as requester, for subnets that branch's tunnel carries; it is relayed only to a
branch whose IKE SA is up and announced our Vendor ID, and only when one of our branches owns every
wanted subnet. Anything else is refused with a reason (so the requester's status can say why), or
dropped when it is not even well-formed. Requests per branch are rate-limited.

Hole punching (punch.py): the hub tells each branch behind NAT the mapping it sees its IKE SA come
from (MAPPING), and puts each side's mapping into the RELAY and the ACK.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass
from typing import Any

from vpnlab_agent.log import LogLines
from vpnlab_agent.mesh import messages as m
from vpnlab_agent.mesh.config import MeshConfig
from vpnlab_agent.mesh.manager import Action, SendNotify
from vpnlab_agent.mesh.messages import MeshNotify, RefuseReason

RATE_PER_S = 20.0  # token bucket per branch: sustained requests per second
RATE_BURST = 50.0
MAX_RELAYED_LOG = 50


def _within(cidr: str, nets: tuple[str, ...]) -> bool:
    n = ipaddress.IPv4Network(cidr, strict=False)
    return any(n.subnet_of(ipaddress.IPv4Network(b, strict=False)) for b in nets)


@dataclass
class _Branch:
    subnets: tuple[str, ...]
    up: bool = False
    vendor: bool = False
    tokens: float = RATE_BURST
    refilled: float = 0.0
    mapping: tuple[str, int] | None = None  # where its IKE SA comes from (behind NAT: its mapping)


class HubRelay(LogLines):
    def __init__(self, config: MeshConfig) -> None:
        self.cfg = config
        self._branches = {name: _Branch(tuple(nets)) for name, nets in config.branches.items()}
        self._actions: deque[Action] = deque(maxlen=10_000)
        self.relayed: deque[dict[str, Any]] = deque(maxlen=MAX_RELAYED_LOG)
        self.refused: deque[dict[str, Any]] = deque(maxlen=MAX_RELAYED_LOG)
        self.counts = {"requests": 0, "relayed": 0, "refused": 0, "refusals_forwarded": 0, "dropped": 0}
        self.log_lines: deque[str] = deque(maxlen=1000)

    # --- inputs --------------------------------------------------------------------------

    def branch_up(self, name: str, vendor: bool, now: float, mapping: tuple[str, int] | None = None,
                  behind_nat: bool = False) -> None:
        b = self._branches.get(name)
        if b is not None:
            b.up, b.vendor = True, vendor
            self.branch_mapped(name, mapping, now, behind_nat)

    def branch_mapped(self, name: str, mapping: tuple[str, int] | None, now: float, behind_nat: bool = False) -> None:
        """The branch's IKE SA comes from `mapping` (it came up, or its NAT mapping changed); one
        behind NAT is told."""
        b = self._branches.get(name)
        if b is None or mapping == b.mapping:
            return
        b.mapping = mapping
        if behind_nat and mapping is not None and b.vendor and self.cfg.relay:
            self._actions.append(SendNotify(name, MeshNotify.MAPPING, m.encode(m.MeshMapping(0, mapping))))

    def branch_down(self, name: str, now: float) -> None:
        b = self._branches.get(name)
        if b is not None:
            b.up = b.vendor = False
            b.mapping = None

    def notify_received(self, peer: str, notify_type: int, data: bytes, now: float) -> None:
        src = self._branches.get(peer)
        if src is None or not self.cfg.relay:
            self.counts["dropped"] += 1
            return
        if not self._take_token(src, now):
            self.counts["dropped"] += 1
            self.log(f"mesh request from {peer} dropped: rate limit")
            return
        try:
            msg = m.decode(notify_type, data)
        except m.MeshMessageError as e:
            self.counts["dropped"] += 1
            self.log(f"bad mesh notify from {peer}: {e}")
            return
        if notify_type == MeshNotify.REQUEST and isinstance(msg, m.MeshRequest):
            self._on_request(peer, src, msg, now)
        elif notify_type == MeshNotify.REFUSE and isinstance(msg, m.MeshRefusal):
            self._on_refusal(peer, msg, now)
        elif notify_type == MeshNotify.MAPPING and isinstance(msg, m.MeshMapping) and src.mapping and src.vendor:
            self._actions.append(SendNotify(peer, MeshNotify.MAPPING, m.encode(m.MeshMapping(0, src.mapping))))
        else:
            self.counts["dropped"] += 1

    # --- outputs -------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        return None

    def status(self, now: float) -> dict[str, Any]:
        return {
            "enabled": self.cfg.relay,
            "role": "hub",
            "limit": self.cfg.limit,
            "branches": {n: {"up": b.up, "vpnlab_peer": b.vendor,
                             **({"mapping": "%s:%d" % b.mapping} if b.mapping else {})}
                         for n, b in self._branches.items()},
            "relayed": list(self.relayed),
            "refused": list(self.refused),
            "counts": dict(self.counts),
            "shortcuts": [],
            "timeline": [],
        }

    # --- rules ---------------------------------------------------------------------------

    def _on_request(self, peer: str, src: _Branch, req: m.MeshRequest, now: float) -> None:
        self.counts["requests"] += 1

        def refuse(reason: RefuseReason, target: str = "") -> None:
            self.counts["refused"] += 1
            self.refused.append({"peer": peer, "target": target, "reason": reason.text, "at": now})
            self.log(f"mesh request from {peer} refused: {reason.text}")
            body = m.encode(m.MeshRefusal(req.request_id, peer, target, reason))
            self._actions.append(SendNotify(peer, MeshNotify.REFUSE, body))

        if req.requester != peer or req.target or not all(_within(s, src.subnets) for s in req.requester_subnets):
            refuse(RefuseReason.INVALID)
            return
        target = next((name for name, b in self._branches.items()
                       if name != peer and all(_within(s, b.subnets) for s in req.wanted_subnets)), None)
        if target is None:
            refuse(RefuseReason.UNKNOWN_SUBNET)
            return
        t = self._branches[target]
        if not t.up:
            refuse(RefuseReason.PEER_DOWN, target)
            return
        if not t.vendor:
            refuse(RefuseReason.PEER_NOT_CAPABLE, target)
            return
        self.counts["relayed"] += 1
        self.relayed.append({"from": peer, "to": target, "id": f"{req.request_id:08x}", "at": now})
        self.log(f"mesh request {req.request_id:08x}: {peer} -> {target}")
        # ACK first, so the requester knows whom to accept before the initiator's IKE_SA_INIT arrives.
        # Each goes in its own IKE SA's window, so the ACK may still come late (behind another
        # request of ours to B): B then holds A's IKE_AUTH until it has the ACK (driver.hold_auth).
        ack = m.MeshAck(req.request_id, peer, target, t.subnets, t.mapping)
        self._actions.append(SendNotify(peer, MeshNotify.ACK, m.encode(ack)))
        relay = m.MeshRequest(req.request_id, peer, req.requester_addr, req.requester_subnets,
                              req.wanted_subnets, target, req.flags, src.mapping)
        self._actions.append(SendNotify(target, MeshNotify.RELAY, m.encode(relay)))

    def _on_refusal(self, peer: str, ref: m.MeshRefusal, now: float) -> None:
        dest = self._branches.get(ref.requester)
        if ref.target != peer or dest is None or not (dest.up and dest.vendor) or ref.requester == peer:
            self.counts["dropped"] += 1
            return
        self.counts["refusals_forwarded"] += 1
        self._actions.append(SendNotify(ref.requester, MeshNotify.REFUSE, m.encode(ref)))

    def _take_token(self, b: _Branch, now: float) -> bool:
        b.tokens = min(RATE_BURST, b.tokens + (now - b.refilled) * RATE_PER_S)
        b.refilled = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True
