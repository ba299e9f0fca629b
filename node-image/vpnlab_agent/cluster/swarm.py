"""A swarm of IKE clients in one container, for measuring a cluster: hundreds of real IKEv2 clients.

Each client is an IkeEndpoint of the agent's own IKE code with its own identity and its own
address (all on wan0), its own UDP 500/4500 sockets, and the RFC 5685 client extension (except the
first `legacy` ones, which announce no redirect support). No data plane: a client only holds its IKE
and child SAs (ESP that arrives is ignored), which is what the members count as tunnels. Clients
start on `ctl initiate <cluster>` and stop on `ctl terminate <cluster>`; one that loses its SA (DPD,
a dead member) reconnects to the virtual address after RETRY_S, one whose member stopped answering
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from vpnlab_agent.cluster.redirect_client import RedirectClient
from vpnlab_agent.config import IkeConfig, NodeConfig, PeerConfig
from vpnlab_agent.ike.endpoint import IkeEndpoint, IkeError
from vpnlab_agent.ike.events import DEAD, IkeSADown, IkeSAUp

log = logging.getLogger("vpnlab_agent.swarm")

NON_ESP_MARKER = b"\x00\x00\x00\x00"
RETRY_S = 1.0
RETRY_JITTER_S = 0.5
DEAD_JITTER_S = 0.2  # a dead member's clients go back at once, spread over this much


@dataclass(frozen=True)
class SwarmClient:
    name: str  # IKE identity
    address: str  # its own address (on wan0)
    inner: str  # the /32 it protects (a child SA needs a selector; no traffic flows)


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, client: _Driver, port: int) -> None:
        self.client, self.port = client, port

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.client.on_datagram(data, addr, self.port)


class _Driver:
    """One client endpoint on its own sockets (the adapter pattern of IkeService, minus the engine)."""

    def __init__(self, swarm: SwarmService, c: SwarmClient, ep: IkeEndpoint, ext: RedirectClient | None) -> None:
        self.swarm, self.c, self.ep, self.ext = swarm, c, ep, ext
        self.socks: dict[int, asyncio.DatagramTransport] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.retry: asyncio.TimerHandle | None = None
        self.up_at: float | None = None
        self.remote: str | None = None
        self.ups = 0
        ep.wakeup = self.flush

    async def open(self, loop: asyncio.AbstractEventLoop) -> None:
        for port in (500, 4500):
            t, _ = await loop.create_datagram_endpoint(lambda p=port: _Proto(self, p), local_addr=(self.c.address, port))
            self.socks[port] = t  # type: ignore[assignment]

    def close(self) -> None:
        for h in (self.timer, self.retry):
            if h is not None:
                h.cancel()
        for t in self.socks.values():
            t.close()

    def now(self) -> float:
        return self.swarm.loop.time()

    def on_datagram(self, data: bytes, addr: tuple[str, int], port: int) -> None:
        if port == 4500:
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP: the swarm has no data plane
            data = data[4:]
        self.ep.receive_datagram(data, addr, port, self.now())
        self.flush()

    def on_timer(self) -> None:
        self.timer = None
        self.ep.handle_timer(self.now())
        self.flush()

    def connect(self) -> None:
        self.retry = None
        if not self.swarm.running:
            return
        try:
            self.ep.connect(self.swarm.peer, self.now())
        except IkeError as e:
            log.warning("%s: %s", self.c.name, e)
        self.flush()

    def flush(self) -> None:
        for data, addr, port in self.ep.datagrams_to_send(self.now()):
            sock = self.socks.get(port)
            if sock is not None:
                sock.sendto(NON_ESP_MARKER + data if port == 4500 else data, addr)
        while (ev := self.ep.next_event()) is not None:
            if isinstance(ev, IkeSAUp):
                self.up_at, self.remote, self.ups = time.time(), ev.remote_addr[0], self.ups + 1
            elif isinstance(ev, IkeSADown):
                self.up_at = self.remote = None
                if self.swarm.running and self.retry is None:
                    base, jitter = (0.0, DEAD_JITTER_S) if ev.reason == DEAD else (RETRY_S, RETRY_JITTER_S)
                    delay = base + random.random() * jitter
                    self.retry = self.swarm.loop.call_later(delay, self.connect)
        self.ep.pop_logs()
        if self.timer is not None:
            self.timer.cancel()
        t = self.ep.get_timer()
        self.timer = self.swarm.loop.call_at(t, self.on_timer) if t is not None else None


class SwarmService:
    name = "swarm"

    def __init__(self, config: NodeConfig) -> None:
        raw = config.extensions["swarm"]
        assert config.ike is not None and config.ike.peers
        self.peer = config.ike.peers[0].name  # the cluster
        target = config.ike.peers[0]
        self.legacy = int(raw.get("legacy", 0))
        self.clients = [SwarmClient(*c) for c in raw["clients"]]
        self.drivers: list[_Driver] = []
        self.running = False
        self.started_at: float | None = None
        self._config, self._target = config, target
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        ike = self._config.ike
        assert ike is not None
        for i, c in enumerate(self.clients):
            cfg = IkeConfig(local_id=c.name, psk=ike.psk, ike_proposals=ike.ike_proposals, esp_proposals=ike.esp_proposals,
                            dpd_interval_s=ike.dpd_interval_s, dpd_retries=ike.dpd_retries,
                            peers=(PeerConfig(self.peer, self._target.remote_id, self._target.address, True,
                                              (c.inner,), self._target.remote_ts),))
            ext = None if i < self.legacy else RedirectClient({self.peer: self._target.address or ""})
            ep = IkeEndpoint(cfg, c.address, force_encap=True, extensions=[ext] if ext else [])
            d = _Driver(self, c, ep, ext)
            await d.open(self.loop)
            self.drivers.append(d)
        log.info("swarm: %d clients (%d without redirect support) for %s at %s", len(self.clients), self.legacy,
                 self.peer, self._target.address)

    async def stop(self) -> None:
        self.running = False
        for d in self.drivers:
            with contextlib.suppress(Exception):
                d.ep.terminate_all(d.now())
                d.flush()
        await asyncio.sleep(0.2)
        for d in self.drivers:
            d.close()

    async def initiate(self, peer: str) -> dict[str, Any]:
        self.running, self.started_at = True, time.time()
        for d in self.drivers:
            d.connect()
        return {"peer": peer, "initiated": len(self.drivers)}

    async def terminate(self, peer: str) -> dict[str, Any]:
        self.running = False
        for d in self.drivers:
            if d.retry is not None:
                d.retry.cancel()
                d.retry = None
            d.ep.terminate_all(d.now())
            d.flush()
        return {"peer": peer, "terminated": len(self.drivers)}

    def status(self) -> dict[str, Any]:
        up = [d for d in self.drivers if d.up_at is not None]
        by_gateway: dict[str, int] = {}
        for d in up:
            by_gateway[d.remote or "?"] = by_gateway.get(d.remote or "?", 0) + 1
        followed = sum(d.ext.stats.followed for d in self.drivers if d.ext)
        last_up = max((d.up_at for d in up), default=None)
        return {
            "clients": len(self.drivers), "legacy": self.legacy, "running": True, "initiated": self.running,
            "started_at": self.started_at, "up": len(up), "by_gateway": dict(sorted(by_gateway.items())),
            "last_up_at": last_up, "redirects_followed": followed,
            "loop_refused": sum(d.ext.stats.refused_loop for d in self.drivers if d.ext),
            "internal_errors": sum(d.ep.internal_errors for d in self.drivers),
        }
