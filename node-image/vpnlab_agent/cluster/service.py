"""The cluster service of a member: keepalived for VRRP, the status multicast, the member pool.

keepalived runs as our child with a rendered config; its notify FIFO tells us every VRRP state
change (read as the loop sees the FIFO readable, never polled). Every `status_interval` we
multicast our load on the segment (TTL 1, not looped back) and hear the others'; `choose()` is
what the redirect extension asks when a client reaches the virtual address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpnlab_agent.cluster import keepalived
from vpnlab_agent.cluster.arrivals import ArrivalCounter
from vpnlab_agent.cluster.config import STATUS_GROUP, STATUS_PORT, ClusterConfig
from vpnlab_agent.cluster.selection import Balancer, metric_named
from vpnlab_agent.cluster.status import MemberPool, MemberStatus, encode_status, next_status
from vpnlab_agent.config import STATE_DIR
from vpnlab_agent.daemon import Daemon

log = logging.getLogger("vpnlab_agent.cluster")

KEEPALIVED = "/usr/sbin/keepalived"
KEEPALIVED_STOP_S = 3.0
MAX_FIFO_LINE = 4096
MAX_STATUS_DATAGRAM = 512
VRRP_NICE = -15  # keepalived's VRRP process (the container has SYS_NICE for it)


class _StatusProto(asyncio.DatagramProtocol):
    def __init__(self, service: ClusterService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.service._on_status(data, addr)


class ClusterService:
    name = "cluster"

    def __init__(self, cfg: ClusterConfig, active_tunnels: Callable[[], int], *,
                 arrivals: ArrivalCounter | None = None, state_dir: str = STATE_DIR, keepalived_bin: str = KEEPALIVED,
                 port: int = STATUS_PORT, group: str = STATUS_GROUP) -> None:
        self.cfg = cfg
        self.active_tunnels = active_tunnels
        self.arrivals = arrivals if arrivals is not None else ArrivalCounter()  # new clients at our address
        self.dir = Path(state_dir)
        self.keepalived_bin = keepalived_bin
        self.port, self.group = port, group
        self.pool = MemberPool(cfg.own, cfg.key, frozenset(m.name for m in cfg.members))
        self.balancer = Balancer(metric_named(cfg.metric))
        self.vrrp_state = "INIT"  # what keepalived last said: MASTER | BACKUP | FAULT | STOP
        self.vrrp_changes: list[tuple[float, str]] = []  # (wall time, state), last few
        self.listeners: list[Callable[[str], None]] = []  # called with the new VRRP state
        self.gateway: Any = None  # the RFC 5685 gateway extension on the virtual address (its counters)
        self.errors: list[str] = []
        self.keepalived = Daemon("keepalived", on_exit=lambda code: self._set_state("FAULT"))
        self._fifo_fd = -1
        self._fifo_buf = b""
        self._sock: socket.socket | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_sent: MemberStatus | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def master(self) -> bool:
        return self.vrrp_state == "MASTER"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.dir.mkdir(parents=True, exist_ok=True)
        fifo = self.dir / "vrrp.fifo"
        with contextlib.suppress(FileNotFoundError):
            fifo.unlink()
        os.mkfifo(fifo, 0o600)
        # O_RDWR: the FIFO never reports EOF when keepalived closes or restarts its end
        self._fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        self._loop.add_reader(self._fifo_fd, self._on_fifo)
        conf = self.dir / "keepalived.conf"
        conf.write_text(keepalived.render(self.cfg.own, [self.cfg.vrrp_instance()], notify_fifo=str(fifo),
                                          nice=VRRP_NICE))
        await self._open_socket()
        for stale in ("keepalived.pid", "keepalived-vrrp.pid"):
            # left by a keepalived killed with its container: on `vpnlab start` its PID may belong to
            # another process now, and keepalived would say "already running" and exit 0
            with contextlib.suppress(FileNotFoundError):
                (self.dir / stale).unlink()
        await self.keepalived.start(
            self.keepalived_bin, "--dont-fork", "--log-console", "--vrrp", "--use-file", str(conf),
            "--pid", str(self.dir / "keepalived.pid"), "--vrrp_pid", str(self.dir / "keepalived-vrrp.pid"),
        )
        log.info("cluster %s: keepalived started (VRRPv%d, advert %gs, priority %d), status every %gs",
                 self.cfg.name, self.cfg.vrrp_version, self.cfg.advert_int_s, self.cfg.me.priority,
                 self.cfg.status_interval_s)
        self._send_status()

    async def _open_socket(self) -> None:
        assert self._loop is not None
        me = self.cfg.me.address
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.group, self.port))  # only datagrams to the group, not to our unicast address
        mreq = struct.pack("4s4s", socket.inet_aton(self.group), socket.inet_aton(me))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        sock.setblocking(False)
        self._sock = sock
        transport, _ = await self._loop.create_datagram_endpoint(lambda: _StatusProto(self), sock=sock)
        self._transport = transport  # type: ignore[assignment]

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.keepalived.stop(KEEPALIVED_STOP_S)  # SIGTERM: keepalived gives the address up, sends priority 0
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._fifo_fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fifo_fd)
            os.close(self._fifo_fd)
            self._fifo_fd = -1
        self._loop = None

    # --- VRRP state, from keepalived ----------------------------------------------------------

    def _on_fifo(self) -> None:
        try:
            chunk = os.read(self._fifo_fd, MAX_FIFO_LINE)
        except BlockingIOError:
            return
        self._fifo_buf = (self._fifo_buf + chunk)[-MAX_FIFO_LINE:]
        *lines, self._fifo_buf = self._fifo_buf.split(b"\n")
        for raw in lines:
            note = keepalived.parse_notify(raw.decode(errors="replace"))
            if note is not None and note.kind == "INSTANCE" and note.state in keepalived.VRRP_STATES:
                self._set_state(note.state)

    def _set_state(self, state: str) -> None:
        if state == self.vrrp_state:
            return
        log.info("VRRP %s -> %s", self.vrrp_state, state)
        self.vrrp_state = state
        self.vrrp_changes = (self.vrrp_changes + [(time.time(), state)])[-20:]
        if state == "MASTER" and (gone := self.pool.drop_masters()):
            log.info("the former master %s is out of the pool until it speaks again", ", ".join(gone))
        for listener in self.listeners:
            try:
                listener(state)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop VRRP handling
                log.exception("VRRP listener failed")
        self._send_status()  # the others learn the new master at once

    # --- status multicast -----------------------------------------------------------------------

    def own_status(self) -> MemberStatus:
        return self.cfg.own_status(self.active_tunnels(), available=self.vrrp_state != "FAULT",
                                   master=self.master, arrivals=self.arrivals.count)

    def _send_status(self) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        now = time.time()
        st = next_status(self._last_sent, self.own_status(), now)
        self._last_sent = st
        self.pool.set_own(st)
        if self._transport is not None:
            try:
                self._transport.sendto(encode_status(st, self.cfg.key), (self.group, self.port))
            except OSError as e:
                log.warning("status multicast: %s", e)
        self._timer = self._loop.call_later(self.cfg.status_interval_s, self._send_status)

    def _on_status(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) > MAX_STATUS_DATAGRAM:
            self.pool.counters.malformed += 1
            return
        before = dict(self.pool.counters.as_dict())
        st = self.pool.receive(data, time.time())
        if st is None:
            after = self.pool.counters.as_dict()
            why = next((k for k in after if after[k] != before.get(k)), "dropped")
            log.warning("status message from %s:%d dropped (%s)", addr[0], addr[1], why)

    # --- balancing --------------------------------------------------------------------------

    def choose(self) -> MemberStatus | None:
        """The member for one new client (counted as handed out), or None when none is available.

        Our own load is taken from the status we last sent, like everyone else's: a fresher figure
        for ourselves only would count our just-arrived clients twice (in it and as pending) and
        send a burst elsewhere."""
        now = time.time()
        alive = self.pool.alive(now)
        target = self.balancer.choose(alive, now)
        if target is None:
            return None
        self.balancer.handed_out(target, now)
        return alive[target]

    def served_here(self) -> None:
        """A client the master serves on the virtual address (no redirect support): pending on us,
        and arrived (its SA counts in our load once established)."""
        self.balancer.handed_out(self.cfg.own, time.time())
        self.arrivals.arrived()

    def status(self) -> dict[str, Any]:
        now = time.time()
        alive = self.pool.alive(now)
        shares = self.balancer.snapshot(alive, now)
        members = {}
        for m in self.cfg.members:
            st = alive.get(m.name)
            heard = self.pool.heard_at(m.name)
            members[m.name] = {
                "address": m.address, "in_pool": st is not None,
                "active": None if st is None else st.active, "capacity": m.capacity, "weight": m.weight,
                "available": None if st is None else st.available, "master": None if st is None else st.master,
                "pending": shares.get(m.name, {}).get("pending", 0),
                "redirects": self.balancer.redirects.get(m.name, 0),
                "missed": self.balancer.misses.get(m.name, 0),
                "shunned_s": shares.get(m.name, {}).get("shunned_s", 0.0),
                "arrivals": None if st is None else st.arrivals,
                "heard_s_ago": None if heard is None else round(now - heard, 2),
            }
        return {
            "cluster": self.cfg.name, "vrrp": self.vrrp_state, "master": self.master,
            "virtual_address": self.cfg.vip, "redirect": self.cfg.redirect, "metric": self.cfg.metric,
            "members": members, "gateway": None if self.gateway is None else self.gateway.status(),
            "status_messages": self.pool.counters.as_dict(),
            "vrrp_changes": [{"at": t, "state": s} for t, s in self.vrrp_changes],
            "running": self.keepalived.running,
            "errors": self.errors + self.keepalived.errors,
        }
