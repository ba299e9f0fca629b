"""NAT traversal that survives, for IkeService: NAT keepalives (RFC 3948 §2.3) from behind a NAT,
and a peer followed to its new address when the data plane authenticated ESP from there (RFC 7296
§2.23). An abstract base of IkeService: it uses the service's loop, endpoint, engine and config, and
the service's `_flush` sends what the endpoint queued."""

from __future__ import annotations

import abc
import asyncio
import logging
from typing import Any

from vpnlab_agent.dataplane.base import EngineError

log = logging.getLogger("vpnlab_agent.ike")


class NatTraversal(abc.ABC):
    _loop: asyncio.AbstractEventLoop | None
    _keepalive: asyncio.TimerHandle | None
    _stopping: bool
    endpoint: Any
    engine: Any
    config: Any
    keepalives_sent: int
    peer_moves: int
    _installed: set[int]

    @abc.abstractmethod
    def _flush(self, fired_at: float | None = None) -> None:
        """Send the endpoint's datagrams and handle its events (the subclass, IkeService)."""

    def _on_peer_moved_from_engine(self, spi_in: int, addr: tuple[str, int]) -> None:
        """Engine thread: ESP of `spi_in` came, authenticated, from a new address."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._peer_moved, spi_in, addr)

    def _peer_moved(self, spi_in: int, addr: tuple[str, int]) -> None:
        if self.endpoint.peer_moved(spi_in, addr):
            self._flush()  # its PeerMoved event moves the IKE SA's other children too

    def _keepalive_interval(self) -> float:
        return float(max(1, self.config.ike.nat_keepalive_s))  # type: ignore[union-attr]

    def _start_keepalives(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.config.ike.nat_keepalive_s > 0:  # 0: none, so a test can watch a NAT mapping expire
            self._keepalive = loop.call_later(self._keepalive_interval(), self._send_keepalives)

    def _send_keepalives(self) -> None:
        """RFC 3948 §2.3: from behind a NAT, one 0xFF byte to each peer every interval, so the NAT
        keeps our mapping while the tunnel is idle."""
        self._keepalive = None
        if self._stopping or self._loop is None:
            return
        for addr in self.endpoint.keepalive_targets():
            try:
                self.engine.send_keepalive(addr)
                self.keepalives_sent += 1
            except EngineError as e:
                log.warning("NAT keepalive to %s:%d: %s", addr[0], addr[1], e)
        self._keepalive = self._loop.call_later(self._keepalive_interval(), self._send_keepalives)

    def _follow_peer(self, ev: Any) -> None:
        """A PeerMoved event (RFC 7296 §2.23): the NAT mapping changed; ESP follows at once, not at
        the next rekey."""
        self.peer_moves += 1
        log.info("%s moved to %s:%d (NAT mapping changed): %d child SA(s) follow", ev.peer, *ev.remote,
                 len(ev.spi_ins))
        for spi in ev.spi_ins:
            if spi in self._installed:
                try:
                    self.engine.update_peer(spi, ev.remote)
                except EngineError as e:
                    log.warning("moving child SA %08x to %s:%d: %s", spi, *ev.remote, e)
