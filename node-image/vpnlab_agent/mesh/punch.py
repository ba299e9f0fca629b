"""Shortcuts between branches behind NAT through UDP hole punching signalled via the hub (beyond
LANCOM, whose rule is that a branch behind NAT never accepts a shortcut; Fortinet ADVPN punches
since FortiOS 6.4). Sans-I/O: what a branch knows of its own NAT, who may punch, and when.

The hub tells each branch behind NAT the mapping it sees its IKE SA come from (MAPPING), puts the
requester B's mapping into the RELAY to A and A's into the ACK to B. B punches (NAT keepalives
from its UDP 4500 to A's mapping) so its NAT lets A in; A punches too and sends IKE_SA_INIT from
its UDP 4500 to B's mapping a moment later. IKE_AUTH authenticates as always, and the tunnel runs
with NAT-T. A symmetric NAT maps B's 4500 towards A to another port than the hub sees, so no
shortcut is tried when either branch is behind one: the traffic stays on the hub (unless A has a
public address: then B initiates, manager._reverse).

NAT type: measured when the branch has two hubs (the same mapping from both: endpoint-independent;
different ones: symmetric); otherwise the type of the topology's NAT device (a lab shortcut, passed
as configuration); unknown: punching is tried, bounded, with the hub as the fallback.
"""

from __future__ import annotations

from typing import Any

from vpnlab_agent.mesh.config import MeshConfig
from vpnlab_agent.mesh.messages import MeshRequest, NatFlag, RefuseReason

EIM = "endpoint-independent"
SYMMETRIC = "symmetric"
# Requester B: punches at these offsets after the ACK (bounded); A's IKE_SA_INIT retransmissions
# (0.5 s, then doubling) each find a hole punched shortly before.
PUNCH_AT_S = (0.0, 0.3, 1.0, 2.0, 4.0)
# Initiator A: its IKE_SA_INIT this long after its own punch, so B's punch is likely out first
# (the hub sends B's ACK before A's RELAY: B punched ~1.5 ms before A had the RELAY, max 11 ms,
# benchmarks/mesh_setup.py --nat); a late punch costs one retransmission (0.5 s).
LEAD_S = 0.02
NAT_REASONS = (RefuseReason.REQUESTER_SYMMETRIC, RefuseReason.INITIATOR_SYMMETRIC, RefuseReason.SAME_NAT)


class NatView:
    """What a branch knows of its own NAT: none (it has a public address), or a type and how that
    type was learnt."""

    def __init__(self, cfg: MeshConfig) -> None:
        self.cfg = cfg
        self.mappings: dict[str, tuple[str, int]] = {}  # hub -> our IKE SA's far end as it sees it

    @property
    def behind(self) -> bool:
        return self.cfg.role == "branch" and self.cfg.public_address is None

    def mapped(self, hub: str, mapping: tuple[str, int]) -> None:
        self.mappings[hub] = mapping

    def hub_gone(self, hub: str) -> None:
        self.mappings.pop(hub, None)

    @property
    def type(self) -> str:
        if not self.behind:
            return "none"
        if len(self.mappings) >= 2:
            return EIM if len(set(self.mappings.values())) == 1 else SYMMETRIC
        return self.cfg.nat_type or "unknown"

    @property
    def source(self) -> str:
        if not self.behind:
            return "public address"
        if len(self.mappings) >= 2:
            return f"measured: mappings seen by {len(self.mappings)} hubs"
        return "topology (the NAT device's type)" if self.cfg.nat_type else "unknown"

    def flags(self) -> int:
        if not self.behind:
            return 0
        f = NatFlag.BEHIND_NAT
        if self.type == SYMMETRIC:
            f |= NatFlag.SYMMETRIC
        if self.cfg.hole_punching:
            f |= NatFlag.PUNCH
        return int(f)

    def status(self) -> dict[str, Any]:
        return {"behind_nat": self.behind, "type": self.type, "source": self.source,
                "hole_punching": self.cfg.hole_punching,
                "mappings": {h: f"{ip}:{port}" for h, (ip, port) in sorted(self.mappings.items())}}


def refusal(nat: NatView, req: MeshRequest) -> RefuseReason | None:
    """We are A and B has no public address: why no shortcut is tried, or None to punch."""
    if not (nat.cfg.hole_punching and req.flags & NatFlag.PUNCH) or req.mapping is None:
        return RefuseReason.NO_PUBLIC_ADDRESS  # LANCOM's rule
    if req.flags & NatFlag.SYMMETRIC:
        return RefuseReason.REQUESTER_SYMMETRIC
    if nat.type == SYMMETRIC:
        return RefuseReason.INITIATOR_SYMMETRIC
    if req.mapping[0] in {ip for ip, _ in nat.mappings.values()}:
        return RefuseReason.SAME_NAT
    return None


def schedule(now: float) -> list[float]:
    return [now + t for t in PUNCH_AT_S]


def pair_line(initiator: str, requester: str, reason: RefuseReason) -> str | None:
    """One line for inspect about a pair that a NAT keeps on the hub; None for other reasons."""
    if reason not in NAT_REASONS:
        return None
    if reason is RefuseReason.SAME_NAT:
        return (f"shortcut {initiator}→{requester} not tried: both are behind the same NAT device "
                "(it does not hairpin)")
    who = requester if reason is RefuseReason.REQUESTER_SYMMETRIC else initiator
    return (f"shortcut {initiator}→{requester} not tried: {who} is behind a symmetric NAT "
            "(address-and-port-dependent mapping)")
