"""IkeEndpoints wired together in memory with a simulated clock (tests, benchmarks, load tools).

Each endpoint is reached by its local address; a datagram an endpoint sends from `local_port` to
(ip, port) arrives at the endpoint whose local_addr is ip, as coming from (sender ip, local_port)
to port. `drop` may discard datagrams to emulate loss and `delay` may hold them in flight (a slow
or distant peer, so that retransmissions cross answers). No sockets and no real time: `run()`
jumps the clock from timer to timer and from arrival to arrival.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import Event

# (data, src (ip, port), dst (ip, port)) -> True to lose the datagram
DropRule = Callable[[bytes, tuple[str, int], tuple[str, int]], bool]
# (data, src, dst) -> seconds in flight (0: delivered at once)
DelayRule = Callable[[bytes, tuple[str, int], tuple[str, int]], float]


class Loopback:
    def __init__(self, *endpoints: IkeEndpoint, now: float = 0.0) -> None:
        self.endpoints = {ep.local_addr: ep for ep in endpoints}
        self.now = now
        self.drop: DropRule | None = None
        self.delay: DelayRule | None = None
        self._in_flight: list[tuple[float, int, bytes, tuple[str, int], tuple[str, int]]] = []
        self._seq = itertools.count()
        self.delivered = 0
        self.dropped = 0
        self.events: dict[str, list[Event]] = {ep.local_addr: [] for ep in endpoints}
        self.trace: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []

    def deliver(self, max_rounds: int = 10_000) -> None:
        """Move datagrams until every endpoint is quiet (or max_rounds passes)."""
        for _ in range(max_rounds):
            moved = False
            for src_ep in list(self.endpoints.values()):
                for data, dst, lport in src_ep.datagrams_to_send(self.now):
                    moved = True
                    src = (src_ep.local_addr, lport)
                    self.trace.append((src, dst, data))
                    if self.drop is not None and self.drop(data, src, dst):
                        self.dropped += 1
                        continue
                    wait = self.delay(data, src, dst) if self.delay is not None else 0.0
                    if wait > 0:
                        heapq.heappush(self._in_flight, (self.now + wait, next(self._seq), data, src, dst))
                        continue
                    self._arrive(data, src, dst)
            while self._in_flight and self._in_flight[0][0] <= self.now:
                _, _, data, src, dst = heapq.heappop(self._in_flight)
                moved = True
                self._arrive(data, src, dst)
            self._collect()
            if not moved:
                return

    def _arrive(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        dst_ep = self.endpoints.get(dst[0])
        if dst_ep is None:
            self.dropped += 1
            return
        self.delivered += 1
        dst_ep.receive_datagram(data, src, dst[1], self.now)

    def _collect(self) -> None:
        for addr, ep in self.endpoints.items():
            while (ev := ep.next_event()) is not None:
                self.events[addr].append(ev)

    def next_timer(self) -> float | None:
        times = [t for ep in self.endpoints.values() if (t := ep.get_timer()) is not None]
        if self._in_flight:
            times.append(self._in_flight[0][0])
        return min(times) if times else None

    def run(self, until: float) -> None:
        """Deliver, then fire timers in order until the clock reaches `until`."""
        self.deliver()
        stuck = 0
        while True:
            t = self.next_timer()
            if t is None or t > until:
                break
            # An endpoint whose deadline does not move after handle_timer() would spin its
            # owner's event loop: that is a bug, and tests should see it.
            stuck = stuck + 1 if t <= self.now else 0
            if stuck > 1000:
                raise RuntimeError(f"timer stuck at {t}: handle_timer() does not advance get_timer()")
            self.now = max(self.now, t)
            for ep in self.endpoints.values():
                ep.handle_timer(self.now)
            self.deliver()
        self.now = max(self.now, until)

    def take_events(self, addr: str) -> list[Event]:
        self._collect()
        out, self.events[addr] = self.events[addr], []
        return out
