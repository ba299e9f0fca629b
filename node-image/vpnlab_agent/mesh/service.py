"""The mesh service in the agent: MeshDriver <-> IkeService, conntrack, counters and the clock.

Branch: watches conntrack NEW events (conntrack.py), feeds IKE events to the driver, polls the
shortcut child SAs' counters (idle timer, first packet on the shortcut). Hub: relays the signalling
and keeps nftables counters of what it forwards between each pair of branches, sampled over time
so `vpnlab measure` can plot the hub's throughput. Runs next to (after) the IKE service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.dataplane.base import EngineError
from vpnlab_agent.ike.events import ChildSAUp
from vpnlab_agent.mesh import hubcount
from vpnlab_agent.mesh.config import MeshConfig
from vpnlab_agent.mesh.conntrack import ConntrackWatcher, nft
from vpnlab_agent.mesh.driver import MeshDriver

log = logging.getLogger("vpnlab_agent.mesh")

POLL_S = 0.2  # shortcut counters (idle timer, traffic)
FAST_POLL_S = 0.002  # while a new shortcut has not carried its first packet yet (its time is measured)
FAST_FOR_S = 5.0  # ... but no longer than this after it came up
SAMPLE_S = 0.5  # hub pair counters
MAX_SAMPLES = 1200  # 10 minutes of hub samples


class MeshService:
    name = "mesh"
    summary_refresh = False  # refresh() lists the hub's nft counters: nothing a summary shows

    def __init__(self, config: NodeConfig, ike: Any) -> None:
        self.config = config
        self.ike = ike  # IkeService: its endpoint (the public API), engine (counters) and listeners
        self.cfg = MeshConfig.from_node(config)
        self.driver = MeshDriver(self.cfg, ike.endpoint)
        self.watcher: ConntrackWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._first_seen: set[int] = set()
        self._installed_at: dict[int, float] = {}
        self._wake = asyncio.Event()
        self._pairs = hubcount.pairs(self.cfg.branches) if self.cfg.role != "branch" else []
        self._hub_counters: dict[tuple[str, str], tuple[int, int]] = {}
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=MAX_SAMPLES)  # (t, bytes, packets)
        self.errors: list[str] = []

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.ike.listeners.append(self._on_ike_event)
        self.driver.start(self._now())  # IKE SAs that came up before we started
        if self.cfg.role == "branch":
            self.watcher = ConntrackWatcher(self._on_session)
            await self.watcher.start()
            self._tasks.append(asyncio.create_task(self._poll_shortcuts()))
        elif self._pairs:
            await nft(hubcount.ruleset(self._pairs))
            self._tasks.append(asyncio.create_task(self._sample_hub()))
        self._reschedule()
        log.info("mesh %s: %s, limit %d", self.cfg.role,
                 "enabled" if self.cfg.enabled or self.cfg.relay else "off", self.cfg.limit)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self.watcher is not None:
            await self.watcher.stop()
        if self._pairs:
            with contextlib.suppress(Exception):
                await nft(None, "delete", "table", "ip", hubcount.TABLE)
        with contextlib.suppress(ValueError):
            self.ike.listeners.remove(self._on_ike_event)
        self._loop = None

    async def refresh(self) -> None:
        if self._pairs:
            await self._read_hub()

    def status(self) -> dict[str, Any]:
        st = self.driver.status(self._now())
        st["now"] = self._now()
        if self.watcher is not None:
            st["conntrack_lines"] = self.watcher.lines
        if self._pairs:
            st["hub_pairs"] = [{"src": s, "dst": d, "packets": p, "bytes": b}
                               for (s, d), (p, b) in sorted(self._hub_counters.items())]
            st["samples"] = [list(x) for x in self.samples]
        if self.errors:
            st["errors"] = st.get("errors", []) + self.errors
        return st

    # --- inputs --------------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _on_ike_event(self, ev: object) -> None:
        self.driver.on_event(ev, self._now())
        if isinstance(ev, ChildSAUp):
            self._wake.set()  # a shortcut may have come up: watch for its first packet closely
        self._after()

    def _on_session(self, src: str, dst: str) -> None:
        if self.driver.session_seen(src, dst, self._now()):
            self._after()

    def _on_timer(self) -> None:
        self._timer = None
        self.driver.handle_timer(self._now())
        self._after()

    # --- outputs -------------------------------------------------------------------------

    def _after(self) -> None:
        # What the driver asked of the endpoint goes out on its own: the endpoint wakes the IKE service.
        for line in self.driver.pop_logs():
            log.info("%s", line)
        while self.driver.punches:
            addr = self.driver.punches.popleft()
            try:  # a NAT keepalive from the UDP 4500 socket: our NAT opens a mapping towards addr
                self.ike.engine.send_keepalive(addr)
            except EngineError as e:
                log.warning("punch to %s:%d: %s", addr[0], addr[1], e)
        self._reschedule()

    def _reschedule(self) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        t = self.driver.get_timer()
        self._timer = self._loop.call_at(t, self._on_timer) if t is not None else None

    async def _poll_shortcuts(self) -> None:
        engine = self.ike.engine
        while True:
            fast = False
            now = self._now()
            for peer, spis in self.driver.shortcut_spis().items():
                total = 0
                for spi in spis:
                    try:
                        c = engine.counters(spi)
                    except EngineError:
                        continue
                    total += c.bytes_in + c.bytes_out
                    packets = c.packets_in + c.packets_out
                    if spi not in self._first_seen:
                        since = self._installed_at.setdefault(spi, now)
                        if packets:
                            self._first_seen.add(spi)
                            # With exactly one packet so far, last_used is its time (same monotonic
                            # clock); otherwise the fast poll bounds the error to FAST_POLL_S.
                            self.driver.first_packet(peer, c.last_used if packets == 1 else now)
                        elif now - since < FAST_FOR_S:
                            fast = True
                self.driver.traffic(peer, total, now)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FAST_POLL_S if fast else POLL_S)

    async def _sample_hub(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self._read_hub()
            await asyncio.sleep(SAMPLE_S)

    async def _read_hub(self) -> None:
        # Right after the table was (re)created a listing can briefly fail with ENOENT (seen on
        # this kernel at agent start-up): a couple of quick retries before calling it an error.
        for attempt in range(3):
            try:
                self._hub_counters = hubcount.parse_counters(
                    await nft(None, "-j", "list", "table", "ip", hubcount.TABLE))
                break
            except (RuntimeError, ValueError, asyncio.TimeoutError) as e:
                if attempt == 2:
                    if len(self.errors) < 10:
                        self.errors.append(f"hub counters: {e}")
                    return
                await asyncio.sleep(0.05)
        total_b = sum(b for _, b in self._hub_counters.values())
        total_p = sum(p for p, _ in self._hub_counters.values())
        self.samples.append((round(self._now(), 3), total_b, total_p))
