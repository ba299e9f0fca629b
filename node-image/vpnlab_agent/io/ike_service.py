"""The asyncio adapter around IkeEndpoint: sockets, the clock, and the data-plane engine.

UDP 500 is our own socket; UDP 4500 belongs to the engine (it carries ESP too), which hands IKE
messages to us without the non-ESP marker, possibly from its own thread. Everything the endpoint
produces is flushed after every input: datagrams go out, ChildSAUp is installed into the engine,
ChildSADeleted removed, the rest logged and handed to `listeners` (the mesh). A listener may call
the endpoint's API: the flush goes on until the endpoint is quiet, and an API call from anywhere
else (an extension's own timer, a conntrack event) makes the endpoint `wakeup()` us to flush soon.
Peers we initiate to are retried with a capped backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.io.credentials import load_credentials, utc_now
from vpnlab_agent.dataplane.base import NATT_PORT, Engine, EngineError
from vpnlab_agent.io.natt import NatTraversal
from vpnlab_agent.ike.constants import IKE_PORT
from vpnlab_agent.ike.endpoint import IkeEndpoint, IkeError
from vpnlab_agent.ike.extension import Extension
from vpnlab_agent.ike.events import (
    DEAD,
    AuthFailed,
    ChildSADeleted,
    ChildSAUp,
    IkeSADown,
    IkeSAUp,
    NotifyReceived,
    PeerMoved,
)

log = logging.getLogger("vpnlab_agent.ike")

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
TIMER_FLOOR_S = 0.05
STOP_GRACE_S = 1.5  # how long stop() waits for the peers' answers to our DELETEs
MAX_ERRORS = 50
MAX_ENGINE_BACKLOG = 1024  # IKE messages from the engine's thread waiting for the event loop
MAX_FLUSH_ROUNDS = 100  # listeners that keep producing output: finish on the next flush


class _Udp500(asyncio.DatagramProtocol):
    def __init__(self, service: IkeService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.service._on_datagram(data, (addr[0], addr[1]), self.service.ike_port)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP %d: %s", self.service.ike_port, exc)  # ICMP unreachable and the like


class IkeService(NatTraversal):
    name = "ike"

    def __init__(self, config: NodeConfig, engine: Engine, *, local_addr: str | None = None,
                 ike_port: int = IKE_PORT, natt_port: int = NATT_PORT, force_encap: bool = True,
                 extensions: list[Extension] | None = None) -> None:
        if config.ike is None:
            raise IkeError(f"{config.name}: no IKE configuration")
        addr = local_addr or config.public_address
        if addr is None:
            raise IkeError(f"{config.name}: no public address to run IKE on")
        self.config = config
        self.engine = engine
        self.local_addr = addr
        self.ike_port = ike_port
        self.natt_port = natt_port
        # Our engines always carry ESP in UDP (RFC 3948), so we always float to 4500 as
        # strongSwan does with encap=yes.
        self.endpoint = IkeEndpoint(config.ike, addr, force_encap=force_encap, extensions=extensions or (),
                                    credentials=load_credentials(config.ike), wall_clock=utc_now)
        self.endpoint.wakeup = self._wakeup
        self._flushing = False
        self._flush_soon = False
        self.dataplane = engine.name
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._installed: set[int] = set()
        self._retry: dict[str, tuple[float, asyncio.TimerHandle]] = {}  # peer -> (delay, handle)
        self._held: set[str] = set()  # peers terminated by the operator: no automatic retry
        self._delays: dict[str, float] = {}  # peer -> next retry delay (doubles, capped)
        self.at_once: set[str] = set()  # peers retried at once when dead (a cluster's VIP: another member)
        self._stopping = False
        self._up_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # IKE on 4500 arrives on the engine's thread; deque append/popleft are thread-safe.
        self._from_engine: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._drain_scheduled = False
        self.engine_dropped = 0  # IKE messages from the engine dropped because the loop lagged
        # Called with every endpoint event after the service handled it (the mesh service listens).
        self.listeners: list[Callable[[object], None]] = []
        self._keepalive: asyncio.TimerHandle | None = None
        self.keepalives_sent = 0
        self.peer_moves = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp500(self),
                                                           local_addr=(self.local_addr, self.ike_port))
        self._udp = transport  # type: ignore[assignment]
        try:
            self.engine.open(self.local_addr, self._on_ike_from_engine, self.natt_port)
        except EngineError:
            transport.close()
            raise
        if hasattr(self.engine, "on_lifetime"):
            self.engine.on_lifetime = self._on_lifetime_from_engine  # type: ignore[attr-defined]
        self.engine.on_peer_moved = self._on_peer_moved_from_engine
        self._start_keepalives(loop)
        log.info("IKE on %s:%d and :%d (engine %s), %d peer(s)", self.local_addr, self.ike_port,
                 self.natt_port, self.engine.name, len(self.config.ike.peers))  # type: ignore[union-attr]
        for peer in self.config.ike.peers:  # type: ignore[union-attr]
            if peer.initiate and peer.address:
                self._connect(peer.name)
        self._flush()

    async def stop(self) -> None:
        """DELETE every IKE SA, wait briefly for the answers, remove our SAs, close the sockets."""
        if self._loop is None:
            return
        self._stopping = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        for _, handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        self.endpoint.terminate_all(self._now())
        self._flush()
        deadline = time.monotonic() + STOP_GRACE_S
        while self.endpoint.status(self._now())["ike_sas"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._timer is not None:
            self._timer.cancel()
        for spi in list(self._installed):
            self._remove(spi)
        self.engine.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._loop = None

    # --- control (called by the agent's control socket) --------------------------------------

    async def rekey(self, peer: str, what: str = "child") -> dict[str, Any]:
        now = self._now()
        if what == "ike":
            started = int(self.endpoint.rekey_ike(peer, now))
        else:
            started = self.endpoint.rekey_child(peer, now)
        self._flush()
        return {"peer": peer, "what": what, "started": started}

    async def initiate(self, peer: str) -> dict[str, Any]:
        self._held.discard(peer)
        self._connect(peer)
        self._flush()
        return {"peer": peer, "initiated": True}

    async def terminate(self, peer: str) -> dict[str, Any]:
        self._held.add(peer)
        if peer in self._retry:
            self._retry.pop(peer)[1].cancel()
        self.endpoint.terminate(peer, self._now())
        self._flush()
        return {"peer": peer, "terminated": True}

    async def wait_up(self, peer: str, timeout: float) -> None:
        """Until an IKE SA with the peer is established (tests and tools)."""
        if self.endpoint.is_up(peer):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._up_waiters.setdefault(peer, [])
        waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        finally:  # a timed-out waiter must not stay behind for a peer that never comes up
            if fut in waiters:
                waiters.remove(fut)
            if not waiters and self._up_waiters.get(peer) is waiters:
                del self._up_waiters[peer]

    def status(self) -> dict[str, Any]:
        st = self.endpoint.status(self._now())
        for child in st["child_sas"]:
            spi = int(child["spi_in"], 16)
            try:
                c = self.engine.counters(spi)
            except EngineError:
                continue
            child.update(bytes_in=c.bytes_in, bytes_out=c.bytes_out, packets_in=c.packets_in,
                         packets_out=c.packets_out, replay_dropped=c.replay_dropped, auth_failed=c.auth_failed)
        return {"ike_sas": st["ike_sas"], "child_sas": st["child_sas"], "half_open": st["half_open"],
                "ike_fragments": st["ike_fragments"], "nat_keepalives_sent": self.keepalives_sent, "peer_moves": self.peer_moves,
                "errors": list(self.errors)}

    # --- inputs -----------------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _on_ike_from_engine(self, data: bytes, addr: tuple[str, int]) -> None:
        """Engine thread: queue the message for the loop. The queue is bounded (a flood on 4500 must
        not grow memory faster than the loop drains it), and one drain call serves a whole burst."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if len(self._from_engine) >= MAX_ENGINE_BACKLOG:
            self.engine_dropped += 1
            return
        self._from_engine.append((data, addr))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            loop.call_soon_threadsafe(self._drain_engine)

    def _drain_engine(self) -> None:
        self._drain_scheduled = False  # before draining: a message queued from now on schedules anew
        pending = self._from_engine
        while pending:
            data, addr = pending.popleft()
            if self._loop is None:
                continue
            self.endpoint.receive_datagram(data, addr, self.natt_port, self._now())
        self._flush()

    def _on_lifetime_from_engine(self, spi_in: int, hard: bool) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._rekey_spi, spi_in)

    def _rekey_spi(self, spi_in: int) -> None:
        if self.endpoint.rekey_child_spi(spi_in, self._now()):
            log.info("child SA %08x reached its byte lifetime: rekeying", spi_in)
        self._flush()

    def _on_datagram(self, data: bytes, addr: tuple[str, int], local_port: int) -> None:
        if self._loop is None:
            return
        self.endpoint.receive_datagram(data, addr, local_port, self._now())
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._now()
        # lazily, when a deadline is due (a DPD check may be): inbound ESP proves the peer alive too
        self.endpoint.esp_seen(self.engine.last_inbound(), now)
        self.endpoint.handle_timer(now)
        self._flush(fired_at=now)

    # --- outputs ----------------------------------------------------------------------------

    def _wakeup(self) -> None:
        """The endpoint has output from an API call: flush soon (at once if we are flushing)."""
        if self._flushing or self._flush_soon or self._loop is None:
            return
        self._flush_soon = True
        self._loop.call_soon(self._flush)

    def _flush(self, fired_at: float | None = None) -> None:
        self._flush_soon = False
        if self._loop is None or self._flushing:
            return
        self._flushing = True
        try:
            for _ in range(MAX_FLUSH_ROUNDS):
                if not self._flush_once():
                    break
            else:
                self._wakeup_later()
        finally:
            self._flushing = False
        self._set_timer(fired_at)

    def _wakeup_later(self) -> None:
        if self._loop is not None and not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)

    def _flush_once(self) -> bool:
        """Datagrams out, events handled; True if anything moved (a listener may have made more)."""
        moved = False
        now = self._now()
        for data, addr, local_port in self.endpoint.datagrams_to_send(now):
            moved = True
            try:
                if local_port == self.natt_port:
                    self.engine.send_ike(data, addr)
                elif self._udp is not None:
                    self._udp.sendto(data, addr)
            except (EngineError, OSError) as e:
                log.warning("sending IKE to %s:%d: %s", addr[0], addr[1], e)
        while (ev := self.endpoint.next_event()) is not None:
            moved = True
            self._handle_event(ev)
            for listener in self.listeners:
                try:
                    listener(ev)
                except Exception:  # noqa: BLE001 - a listener's bug must not stop IKE
                    log.exception("IKE event listener failed")
        return moved

    def _set_timer(self, fired_at: float | None) -> None:
        if self._loop is None:
            return
        for line in self.endpoint.pop_logs():
            log.info("%s", line)
        deadline = self.endpoint.get_timer()
        if deadline is not None and fired_at is not None and deadline <= fired_at:
            # Safety net: a deadline that handle_timer() did not move would spin the loop.
            deadline = fired_at + TIMER_FLOOR_S
        if deadline != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer) if deadline is not None else None
            self._timer_at = deadline

    def _handle_event(self, ev: object) -> None:
        if isinstance(ev, ChildSAUp):
            sa = ev.child
            try:
                self.engine.install(sa)
                self._installed.add(sa.spi_in)
            except EngineError as e:
                self._error(f"installing child SA with {sa.name}: {e}")
                # Tell the peer, so it does not send into an SA we do not have.
                self.endpoint.delete_child_spi(sa.spi_in, self._now())
                return
            what = f"rekeyed (replaces {ev.rekey_of:08x})" if ev.rekey_of is not None else "up"
            log.info("child SA with %s %s: %s === %s, SPIs in %08x out %08x, %s-%d", sa.name, what,
                     _selectors(sa.local_ts), _selectors(sa.remote_ts), sa.spi_in, sa.spi_out,
                     sa.algorithm.cipher, sa.algorithm.key_bits)
        elif isinstance(ev, ChildSADeleted):
            self._remove(ev.spi_in)
            log.info("child SA with %s deleted: SPI in %08x", ev.peer, ev.spi_in)
        elif isinstance(ev, IkeSAUp):
            log.info("IKE SA with %s %s: %s, %s %s:%d", ev.peer, "rekeyed" if ev.rekey else "up", ev.suite_desc,
                     "we initiated" if ev.initiator else "peer initiated", *ev.remote_addr)
            if ev.peer in self._retry:
                self._retry.pop(ev.peer)[1].cancel()
            self._retry_delay_reset(ev.peer)
            for fut in self._up_waiters.pop(ev.peer, []):
                if not fut.done():
                    fut.set_result(None)
        elif isinstance(ev, PeerMoved):
            self._follow_peer(ev)
        elif isinstance(ev, IkeSADown):
            log.info("IKE SA with %s down: %s", ev.peer, ev.reason)
            self._schedule_retry(ev.peer, at_once=ev.reason == DEAD and ev.peer in self.at_once)
        elif isinstance(ev, AuthFailed):
            log.warning("authentication failed with %s (%s:%d): %s", ev.peer, ev.addr[0], ev.addr[1], ev.reason)
            self._error(f"authentication failed with {ev.peer}: {ev.reason}")
        elif isinstance(ev, NotifyReceived):
            log.info("private notify %d from %s (%d bytes)", ev.notify_type, ev.peer, len(ev.data))

    def _remove(self, spi_in: int) -> None:
        if spi_in not in self._installed:
            return
        self._installed.discard(spi_in)
        try:
            self.engine.remove(spi_in)
        except EngineError as e:
            log.warning("removing child SA %08x: %s", spi_in, e)

    def _error(self, text: str) -> None:
        self.errors.append(text)
        del self.errors[:-MAX_ERRORS]

    # --- initiating and retrying -------------------------------------------------------------

    def _connect(self, peer: str) -> None:
        try:
            self.endpoint.connect(peer, self._now())
        except IkeError as e:
            self._error(str(e))

    def _retry_delay_reset(self, peer: str) -> None:
        self._delays.pop(peer, None)

    def _schedule_retry(self, peer: str, *, at_once: bool = False) -> None:
        if self._stopping or peer in self._held or self._loop is None:
            return
        try:
            cfg = self.endpoint.peer(peer)
        except IkeError:
            return
        if not (cfg.initiate and cfg.address):
            return
        delay = self._delays.get(peer, 0.0 if at_once else RETRY_FIRST_S)  # then backoff as usual
        self._delays[peer] = min(max(delay * 2, RETRY_FIRST_S), RETRY_MAX_S)
        if peer in self._retry:
            self._retry.pop(peer)[1].cancel()
        handle = self._loop.call_later(delay, self._retry_now, peer)
        self._retry[peer] = (delay, handle)
        log.info("retrying IKE with %s in %g s", peer, delay)

    def _retry_now(self, peer: str) -> None:
        self._retry.pop(peer, None)
        if self._stopping or peer in self._held:
            return
        self._connect(peer)
        self._flush()


def _selectors(cidrs: tuple[str, ...], shown: int = 6) -> str:
    """A child SA's selectors for its log line: a hub's star tunnel has one per branch LAN, and
    `inspect LAB NODE` lists them all."""
    more = f" and {len(cidrs) - shown} more" if len(cidrs) > shown else ""
    return ",".join(cidrs[:shown]) + more
