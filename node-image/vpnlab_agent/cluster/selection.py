"""Which cluster member takes the next client: a pluggable load metric plus the redirects in flight.

Status messages arrive once an interval, but a burst of clients arrives within milliseconds: chosen
on the last status alone, all of them would go to the same member. So the balancer counts every
redirect it hands out as load on its target ("pending") until that member's status says the
client arrived: each message carries how many new IKE_SA_INITs it took since it started
(`arrivals`), and as many pending redirects as that counter grew are taken off, oldest first. The
counter is exact where the load is not (a client leaving while another arrives leaves the load
flat), so no time rule is needed to guess arrivals (the former 2 s SETTLE_S, which let a member
that never received its clients draw more of them every 2 s).

A redirect still pending when its member reports MISS_S or more after it never arrived: the member
takes part in the pool but does not answer IKE (firewalled, its IKE service down). It is left out
for SHUN_S, doubled on every further miss (up to SHUN_MAX_S), then takes one client at a time
(a probe) until one arrives. Its clients give up on it (7.5 s) and come back to the virtual address,
where they are sent elsewhere. HOLD_S bounds pending redirects on a member whose status stopped.
Ties are broken by member name, so equal members fill round-robin.

Metrics (`metric:` of a cluster; docs/loadbalancer.md):
  tunnels   the fewest active tunnels (the seed's rule)
  capacity  free capacity with weights: the lowest share used, load / (capacity x weight), so members
            fill in proportion to capacity x weight; a full member (load >= capacity) takes no one
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from vpnlab_agent.cluster.arrivals import COUNTER  # arrivals wrap
from vpnlab_agent.cluster.status import MemberStatus

MISS_S = 4.0  # a redirected client's IKE_SA_INIT reaches its member well within this, even under load
SHUN_S = 10.0
SHUN_MAX_S = 160.0
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
    miss_s: float = MISS_S
    hold_s: float = HOLD_S
    redirects: dict[str, int] = field(default_factory=dict)  # handed out, per target, since start
    misses: dict[str, int] = field(default_factory=dict)  # redirects that never arrived, per target
    _pending: dict[str, deque[float]] = field(default_factory=dict)
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (timestamp_ms, arrivals) last used
    _strikes: dict[str, int] = field(default_factory=dict)  # misses since the member's last arrival
    _arrived_at: dict[str, float] = field(default_factory=dict)  # timestamp of its last status with arrivals
    _shunned_until: dict[str, float] = field(default_factory=dict)

    def choose(self, pool: dict[str, MemberStatus], now: float) -> str | None:
        """The member for one new client, or None when no member is available."""
        best: tuple[float, str] | None = None
        for name, st in pool.items():
            if not st.available:
                continue
            pending = self.pending(name, st, now)
            if self._strikes.get(name) and (now < self._shunned_until.get(name, 0.0) or pending):
                continue  # missed its clients: left out, then one probe at a time
            score = self.metric.score(st, st.active + pending)
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
        q = self._pending.setdefault(name, deque(maxlen=MAX_PENDING))
        seen = self._seen.get(name)
        if seen is None or st.timestamp_ms > seen[0]:
            self._seen[name] = (st.timestamp_ms, st.arrivals)
            if seen is not None:
                came = (st.arrivals - seen[1]) % COUNTER
                if came:
                    self._arrived_at[name] = st.timestamp_ms / 1000
                    self._strikes.pop(name, None)  # it answers IKE: in the pool like anyone
                    self._shunned_until.pop(name, None)
                for _ in range(min(came, len(q))):
                    q.popleft()  # arrived: now in its load
        reported = st.timestamp_ms / 1000
        missed, last = 0, 0.0
        # Entries are in time order: what is left of the old ones never arrived, or never will.
        while q and q[0] + self.miss_s <= reported:
            last = q.popleft()
            missed += 1
        while q and q[0] + self.hold_s <= now:
            q.popleft()
        if missed:
            self.misses[name] = self.misses.get(name, 0) + missed
        # Shunned only when no client at all reached it since: one client that did not come (it gave
        # up, or its loop guard refused the redirect) says nothing about a member others reach.
        if missed and self._arrived_at.get(name, float("-inf")) <= last:
            strikes = self._strikes[name] = self._strikes.get(name, 0) + 1
            self._shunned_until[name] = now + min(SHUN_S * 2 ** (strikes - 1), SHUN_MAX_S)
        return len(q)

    def shunned(self, name: str, now: float) -> float:
        """Seconds this member is still left out for (0: it may be chosen)."""
        return max(self._shunned_until.get(name, 0.0) - now, 0.0) if self._strikes.get(name) else 0.0

    def snapshot(self, pool: dict[str, MemberStatus], now: float) -> dict[str, dict[str, float]]:
        """Per member: reported tunnels, pending redirects, redirects handed out and missed (for inspect)."""
        return {n: {"active": st.active, "pending": self.pending(n, st, now),
                    "redirects": self.redirects.get(n, 0), "missed": self.misses.get(n, 0),
                    "shunned_s": round(self.shunned(n, now), 1)} for n, st in pool.items()}
