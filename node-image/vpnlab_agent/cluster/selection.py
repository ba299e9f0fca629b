"""Which cluster member takes the next client: a pluggable load metric plus the redirects in flight.

Status messages arrive once an interval, but a burst of clients arrives within milliseconds: chosen
on the last status alone, all of them would go to the same member. So the balancer counts every
redirect it hands out as load on its target ("pending") until a status message from that member
shows it: its load grew by that many since its previous message (the oldest pending go first), or
the message is SETTLE_S younger than the redirect, or HOLD_S has passed (the client never came).
Without the first rule a member whose message came early in a burst counted its new clients twice
for SETTLE_S (in its load and as pending) and drew too few of the rest. Ties are broken by member name, so equal members fill round-robin.

Metrics (`metric:` of a cluster; docs/loadbalancer.md):
  tunnels   the fewest active tunnels (the seed's rule)
  capacity  free capacity with weights: the lowest share used, load / (capacity x weight), so members
            fill in proportion to capacity x weight; a full member (load >= capacity) takes no one
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from vpnlab_agent.cluster.status import MemberStatus

SETTLE_S = 2.0  # a client's first IKE_SA_INIT reaches its member well within this, even under load
HOLD_S = 10.0
MAX_PENDING = 10_000  # per member; a redirect flood cannot grow memory without bound


class Metric(Protocol):
    name: str

    def score(self, st: MemberStatus, load: int) -> float | None:
        """Lower is better; None: this member takes no new client now."""


class FewestTunnels:
    name = "tunnels"

    def score(self, st: MemberStatus, load: int) -> float | None:
        if st.capacity and load >= st.capacity:
            return None
        return float(load)


class FreeCapacity:
    name = "capacity"

    def score(self, st: MemberStatus, load: int) -> float | None:
        if st.capacity <= 0 or load >= st.capacity or st.weight <= 0:
            return None
        return load / (st.capacity * st.weight)


METRICS: dict[str, type] = {"tunnels": FewestTunnels, "capacity": FreeCapacity}


def metric_named(name: str) -> Metric:
    try:
        return METRICS[name]()
    except KeyError:
        raise ValueError(f"unknown load metric {name!r} (known: {', '.join(METRICS)})") from None


@dataclass
class Balancer:
    metric: Metric
    settle_s: float = SETTLE_S
    hold_s: float = HOLD_S
    redirects: dict[str, int] = field(default_factory=dict)  # handed out, per target, since start
    _pending: dict[str, deque[float]] = field(default_factory=dict)
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (timestamp_ms, active) last used

    def choose(self, pool: dict[str, MemberStatus], now: float) -> str | None:
        """The member for one new client, or None when no member is available."""
        best: tuple[float, str] | None = None
        for name, st in pool.items():
            if not st.available:
                continue
            score = self.metric.score(st, st.active + self.pending(name, st, now))
            if score is None:
                continue
            if best is None or (score, name) < best:
                best = (score, name)
        return None if best is None else best[1]

    def handed_out(self, target: str, now: float) -> None:
        """A client was sent to (or kept by) `target`: count it until that member's status shows it."""
        q = self._pending.setdefault(target, deque(maxlen=MAX_PENDING))
        q.append(now)
        self.redirects[target] = self.redirects.get(target, 0) + 1

    def pending(self, name: str, st: MemberStatus, now: float) -> int:
        q = self._pending.get(name)
        seen = self._seen.get(name)
        if seen is None or st.timestamp_ms > seen[0]:
            self._seen[name] = (st.timestamp_ms, st.active)
            if seen is not None and q:
                for _ in range(min(max(st.active - seen[1], 0), len(q))):
                    q.popleft()  # arrived: now in its load
        if not q:
            return 0
        reported = st.timestamp_ms / 1000
        # Entries are in time order: drop from the left what the status already covers or what expired.
        while q and (q[0] + self.settle_s <= reported or q[0] + self.hold_s <= now):
            q.popleft()
        return len(q)

    def snapshot(self, pool: dict[str, MemberStatus], now: float) -> dict[str, dict[str, int]]:
        """Per member: reported tunnels, pending redirects and redirects handed out (for inspect)."""
        return {n: {"active": st.active, "pending": self.pending(n, st, now),
                    "redirects": self.redirects.get(n, 0)} for n, st in pool.items()}
