"""Userspace ESP-in-UDP engine over a TUN device, for kernels without ESP (as on the lab machines).

Threads, each with blocking I/O and its own preallocated buffers:
- outbound: read an inner packet from TUN `ipsec0`, ask the SA table (sa_table.py: longest prefix,
  then preference, both selectors) which SA carries it, encrypt, send on the UDP 4500 socket;
- inbound: receive a datagram, hand IKE (non-ESP marker) to `on_ike`, ignore NAT-keepalives, look the
  SPI up, check replay window and ICV, decrypt, check the inner addresses against the SA's selectors
  (a peer may only send what it negotiated), write the packet to TUN;
- tx (offload mode): sends the UDP GSO batches the outbound thread prepared (udp_tx.py), so that
  thread's next read and encryption overlap the send syscall (the kernel work runs without the GIL).

Per-packet kernel work dominated at first; offload mode (the default) amortises it like NIC drivers:
- TUN with IFF_VNET_HDR and TSO/checksum offload: TCP hands us up to 64 kB at once; we cut it into
  MSS segments and compute their checksums (tun.segment_tcp);
- UDP GSO (UDP_SEGMENT): the ESP packets of one such read leave in one sendmsg;
- UDP GRO: the receiver gets them back in one recvmsg;
- GRO on the TUN (tun.GroWriter): consecutive received segments of one flow go back into the kernel
  as one GSO packet.
Measured on the 2-core lab machine under load (benchmarks/esp_throughput.py): one TCP stream
~200 Mbit/s without offloads, ~400-560 Mbit/s with them; strongSwan kernel-libipsec 140-250.

Routes (routes.py): each remote selector of an outbound SA via the TUN device (the SA table then
picks the SA, preference included); a peer covered by its own SA's remote selectors gets a /32 pin
via the underlay. The engine owns the clock and the randomness the codec gets (sans-I/O codec).
Routing contexts (hsvpn, per-network) get a TUN and an SA table each (context_io.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from vpnlab_agent.dataplane import tun
from vpnlab_agent.dataplane.base import NATT_PORT, Engine, EngineError, IkeHandler
from vpnlab_agent.dataplane.drops import Drops
from vpnlab_agent.dataplane.routes import Route, RouteSync
from vpnlab_agent.dataplane.sa_table import NO_ROUTE, Entry, LifetimeHandler, SaTable, follow_peer, make_entry
from vpnlab_agent.dataplane.udp_tx import UdpTx, bind_udp
from vpnlab_agent.dataplane.underlay import DEFAULT_MTU as UNDERLAY_MTU  # noqa: F401 - re-exported
from vpnlab_agent.dataplane.underlay import OUTER_HEADERS, UnderlayMtu, peer_pins
from vpnlab_agent.esp.ciphers import BACKEND, PacketBuffer
from vpnlab_agent.esp.codec import AuthenticationFailed, EspError, ReplayedPacket, SequenceOverflow, max_inner_len
from vpnlab_agent.rtnl import Rtnl
from vpnlab_agent.sa import ChildSA, EspAlgorithm, SACounters

log = logging.getLogger(__name__)

DEVICE = "ipsec0"
SOCKET_BUFFER = 1 << 20  # ~700 ESP packets of burst at the receiver
TUN_QUEUE = 256  # packets (a TSO packet counts as one); bounded queues keep latency down
BUF_SIZE = 65536 + 256
_GCM = EspAlgorithm("aes-gcm-16", 128)

_U32 = struct.Struct("!I")
_I32N = struct.Struct("=i")  # UDP_GRO cmsg value, host order
_VNET = struct.Struct("<BBHHHH")
_U64 = struct.Struct("!Q")  # inner source || destination, one dict key


class UserspaceEngine(Engine):
    name: ClassVar[str] = "userspace"

    def __init__(self, *, route_src: str | None = None, device: str = DEVICE,
                 underlay_mtu: int | None = None, on_lifetime: LifetimeHandler | None = None,
                 offload: bool = True, tx_thread: bool = True, contexts: list[Any] | None = None) -> None:
        super().__init__(route_src=route_src)
        # offload: TSO/checksum offload on the TUN (we cut and finish TCP segments), UDP GSO to send
        # ESP packets in batches, UDP GRO to receive them in batches, and received TCP segments merged
        # into GSO packets on the TUN (tun.GroWriter). Each falls back alone if the kernel says no.
        self.offload = offload
        self.tx = UdpTx(None, thread=offload and tx_thread, gso=offload)
        self._gro: tun.GroWriter | None = None
        self._udp_gro = False
        self.tso_reads = 0  # TSO packets the kernel handed us (each cut into many ESP packets)
        self.device = device
        self.underlay = UnderlayMtu(underlay_mtu)  # None: wan0's, followed (underlay.py)
        self.tx.on_too_big = self._too_big
        self._local_addr = ""
        self.drops = Drops()
        self.table = SaTable(on_lifetime)
        self._lock = threading.Lock()  # serialises control-plane changes only
        self._routes = RouteSync()
        self._pins: dict[str, Route] = {}  # peer address -> its /32 via the underlay
        self._tun_fd = -1
        self._ifindex = 0
        self._mtu = 0
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._on_ike: IkeHandler | None = None
        self.ctx: Any = None  # routing contexts
        if contexts:
            from vpnlab_agent.dataplane.context_io import ContextPlane

            self.ctx = ContextPlane(contexts, on_lifetime, offload=offload, tx_thread=tx_thread)
            self.ctx.tx.on_too_big = self._too_big

    # ---- lifecycle -------------------------------------------------------------------------

    def open(self, local_addr: str, on_ike: IkeHandler, port: int = NATT_PORT) -> None:
        if self._sock is not None:
            raise EngineError("userspace engine is already open")
        self._on_ike = on_ike
        try:
            sock, self._udp_gro = bind_udp(local_addr, port, SOCKET_BUFFER, gro=self.offload)
        except OSError as e:
            raise EngineError(f"cannot bind UDP {local_addr}:{port}: {e.strerror}") from e
        try:
            self._tun_fd = tun.open_tun(self.device, vnet_hdr=self.offload)
            if self.offload:
                try:
                    tun.set_offload(self._tun_fd)
                except OSError as e:
                    log.info("no TUN offloads (%s): packets come one MTU at a time", e.strerror)
            tun.disable_ipv6(self.device)
            self._local_addr = local_addr
            self._mtu = max_inner_len(self.underlay.read(local_addr) - OUTER_HEADERS, _GCM)
            self.tx.max_datagram = self.underlay.max_datagram
            self._ifindex = tun.configure(self.device, self._mtu, TUN_QUEUE)
        except (tun.TunError, OSError) as e:
            sock.close()
            if self._tun_fd >= 0:
                os.close(self._tun_fd)
                self._tun_fd = -1
            raise EngineError(f"cannot set up {self.device}: {e}") from e
        self._sock = self.tx.sock = sock
        self._closing = False
        loops = [("out", self._outbound_loop), ("in", self._inbound_loop)]
        if self.tx.thread:
            loops.append(("tx", self.tx.loop))
        self._threads = [threading.Thread(target=self._guarded, args=(loop,), name=f"esp-{what}-{self.device}",
                                          daemon=True) for what, loop in loops]
        if self.ctx is not None:
            try:
                self.ctx.open(sock, self._guarded, self)
            except (tun.TunError, OSError) as e:
                raise EngineError(f"cannot set up the context devices: {e}") from e
        for t in self._threads:
            t.start()
        log.info("userspace engine up: %s mtu %d, UDP %s:%d, crypto %s", self.device, self._mtu,
                 local_addr, port, BACKEND)

    def close(self) -> None:
        if self._sock is None:
            return
        self._closing = True
        with self._lock:
            for spi in list(self.table.entries):
                self.table.remove(spi)
            self._routes.clear()
            self._pins.clear()
        sock, self._sock = self._sock, None
        # Deleting the device wakes the TUN reader (EFAULT); shutdown wakes the socket reader.
        try:
            tun.delete(self.device)
        except Exception as e:  # noqa: BLE001 - keep closing
            log.warning("deleting %s: %s", self.device, e)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # unconnected UDP says ENOTCONN, but the reader is woken all the same
        self.tx.stop()
        if self.ctx is not None:
            self.ctx.close()
        for t in self._threads:
            t.join(timeout=2.0)
        sock.close()
        if self._tun_fd >= 0:
            os.close(self._tun_fd)
            self._tun_fd = -1
        self._threads = []

    # ---- control plane ---------------------------------------------------------------------

    def update_peer(self, spi_in: int, addr: tuple[str, int]) -> None:
        if self.ctx is not None and self.ctx.tables.has(spi_in):
            return self.ctx.follow(spi_in, addr, None)
        follow_peer(self.table.entries.get(spi_in), spi_in, addr, None)

    def install(self, sa: ChildSA) -> None:
        if self._sock is None:
            raise EngineError("userspace engine is not open")
        if not sa.encap:
            raise EngineError(f"SA {sa.name}: the userspace engine only does ESP in UDP (remote_port is 0)")
        in_contexts = sa.context or sa.trailer.kind != "rfc4303"
        if in_contexts and self.ctx is None:
            raise EngineError(f"SA {sa.name}: routing context {sa.context or sa.trailer.kind!r}: "
                              "this engine has only the main one")
        try:
            entry = make_entry(sa, time.monotonic, os.urandom)
        except ValueError as e:
            raise EngineError(f"SA {sa.name} (SPI {sa.spi_in:#010x}): {e}") from e
        table: Any = self.ctx if in_contexts else self.table
        with self._lock:
            try:
                table.add(entry)
            except ValueError as e:
                raise EngineError(str(e)) from e
            try:
                self._set_mtu()
                self._sync_routes()
            except Exception as e:
                # leave the engine as it was: the SA is either fully installed or not at all
                table.remove(sa.spi_in)
                self._set_mtu()
                self._sync_routes()
                if isinstance(e, EngineError):
                    raise
                raise EngineError(f"installing SA {sa.name} (SPI {sa.spi_in:#010x}): {e}") from e

    def remove(self, spi_in: int) -> None:
        with self._lock:
            in_contexts = self.ctx is not None and self.ctx.tables.has(spi_in)
            if not in_contexts and spi_in not in self.table.entries:
                raise EngineError(f"no SA with inbound SPI {spi_in:#010x}")
            (self.ctx if in_contexts else self.table).remove(spi_in)
            self._set_mtu()
            self._sync_routes()

    def _too_big(self) -> None:
        """Sending thread: a GSO batch outgrew the underlay; never waits on a control-plane change."""
        if self.underlay.due() and self._lock.acquire(blocking=False):
            try:
                self._set_mtu()
            finally:
                self._lock.release()

    def _set_mtu(self) -> None:
        sas = [e.sa for e in self.table.entries.values()]
        budget = self.underlay.read(self._local_addr) - OUTER_HEADERS
        self.tx.max_datagram = self.underlay.max_datagram
        if self.ctx is not None:
            self.ctx.resize(budget)
        mtu = min((max_inner_len(budget, sa.algorithm, sa.trailer) for sa in sas), default=max_inner_len(budget, _GCM))
        if mtu != self._mtu and not self._closing:
            with Rtnl() as rt:
                rt.set_link(self._ifindex, mtu=mtu)
            self._mtu = mtu

    def _sync_routes(self) -> None:
        """Each remote selector of an outbound SA once, via the TUN at metric 0 (as a configured route
        would be: a full tunnel's 0.0.0.0/0 takes over the default route); the SA table picks the SA,
        so two SAs for one prefix share the route and it stays while either does."""
        if self._closing:
            self._routes.clear()
            return
        wanted = [Route(cidr, self._ifindex, prefsrc=self.route_src) for cidr in self.table.remote_prefixes()]
        if self.ctx is not None:
            wanted += self.ctx.routes()
        self._routes.sync(peer_pins(self.table, self._pins) + wanted)

    def last_inbound(self) -> dict[int, float]:
        return {**self.table.last_inbound(), **(self.ctx.last_inbound() if self.ctx is not None else {})}

    def counters(self, spi_in: int) -> SACounters:
        entry = self.table.entries.get(spi_in) or (self.ctx.entry(spi_in) if self.ctx is not None else None)
        if entry is None:
            raise EngineError(f"no SA with inbound SPI {spi_in:#010x}")
        return dataclasses.replace(entry.counters)

    def status(self) -> dict[str, Any]:
        entries = list(self.table.entries.values())  # copies first: install/remove may run meanwhile
        current = {id(e) for e in self.table.outbound_entries()}
        drops = dataclasses.asdict(self.drops)
        drops["send_errors"] += self.tx.errors
        return {
            "engine": self.name,
            "device": self.device,
            "mtu": self._mtu,
            "underlay_mtu": self.underlay.mtu,
            "gso_too_big": self.tx.too_big,
            "crypto": BACKEND,
            "offload": {"tun": self.offload, "udp_gso": self.tx.gso, "udp_gro": self._udp_gro},
            "tun_writes": self._gro.writes if self._gro else None,
            "tso_reads": self.tso_reads,
            "sa_count": len(entries),
            "drops": drops,
            "contexts": self.ctx.status() if self.ctx is not None else None,
            "sas": [
                {
                    "name": e.sa.name, "reqid": e.sa.reqid, "spi_in": e.sa.spi_in, "spi_out": e.sa.spi_out,
                    "outbound": id(e) in current, "expired": e.expired,
                    "local_ts": list(e.sa.local_ts), "remote_ts": list(e.sa.remote_ts),
                    "preference": e.sa.preference, "trailer": e.sa.trailer.kind,
                    **dataclasses.asdict(e.counters),
                }
                for e in entries
            ],
        }

    # ---- packet loops ----------------------------------------------------------------------

    def _guarded(self, loop: Callable[[], None]) -> None:
        """Run a packet loop; a bug that escapes it is logged and counted, and the loop starts over."""
        while not self._closing:
            try:
                loop()
                return
            except Exception:  # noqa: BLE001 - the data plane must outlive one bad packet
                self.drops.internal_errors += 1
                log.exception("%s failed; restarting it", threading.current_thread().name)

    def _outbound_loop(self) -> None:
        fd, sock = self._tun_fd, self._sock
        assert sock is not None
        offload = self.offload
        src, dst = PacketBuffer(BUF_SIZE), PacketBuffer(BUF_SIZE + 4096)
        seg = PacketBuffer(4096)  # one TCP segment cut from a TSO packet
        data, sview, dview = src.data, src.view, dst.view
        vnet = bytearray(tun.VNET_HDR_LEN)
        hlen = tun.VNET_HDR_LEN if offload else 0
        # the virtio header lands in its own buffer, the packet at offset 0 of src (room for the trailer)
        bufs = [vnet, sview[:65536]] if offload else [sview[:65536]]
        readv, sendto, key_of, drops = os.readv, sock.sendto, _U64.unpack_from, self.drops
        vnet_of, complete = _VNET.unpack_from, tun.complete_checksum
        table, tx = self.table, self.tx
        route, lifetime, seal_tso, queue_one = table.route, table.lifetime, tx.seal_tso, tx.queue_one
        while True:
            try:
                n = readv(fd, bufs) - hlen
            except OSError:
                if self._closing:
                    return
                continue
            if n < 20 or data[0] >> 4 != 4:
                drops.not_ipv4 += 1
                continue
            entry = route(key_of(data, 12)[0])
            if entry.__class__ is not Entry:
                if entry is NO_ROUTE:
                    drops.no_route += 1
                else:
                    drops.policy_out += 1
                continue
            c = entry.counters
            if c.bytes_out + c.bytes_in > entry.next_limit:
                lifetime(entry)
            if entry.expired:
                drops.expired += 1
                continue
            out, addr = entry.out, entry.addr
            try:
                if offload and (vnet[0] or vnet[1]):
                    flags, gso, _, mss, cstart, coff = vnet_of(vnet)
                    if gso == tun.VNET_HDR_GSO_TCPV4 and mss > 0 and data[9] == 6:
                        self.tso_reads += 1
                        seal_tso(out, src, n, mss, seg, addr)
                        continue
                    if gso:
                        drops.not_ipv4 += 1  # a GSO type we never offered
                        continue
                    if flags & tun.VNET_HDR_F_NEEDS_CSUM:
                        complete(data, sview, n, cstart, coff)
                if tx.enq != tx.done:
                    queue_one(out, src, n, addr)  # the TX thread still has batches: never overtake them
                    continue
                m = out.encapsulate_into(src, n, dst)
                sendto(dview[:m], addr)
            except SequenceOverflow:
                drops.expired += 1
                lifetime(entry, exhausted=True)
                continue
            except OSError:
                drops.send_errors += 1

    def _inbound_loop(self) -> None:
        fd, sock = self._tun_fd, self._sock
        assert sock is not None
        # one: a datagram split off a UDP GRO batch; as large as any datagram (a peer's MTU may exceed ours)
        src, one, dst = PacketBuffer(BUF_SIZE), PacketBuffer(BUF_SIZE), PacketBuffer(BUF_SIZE)
        data, sview, out, oview = src.data, src.view, dst.data, dst.view
        recv, recvmsg, write, u32 = sock.recvfrom_into, sock.recvmsg_into, os.write, _U32.unpack_from
        key_of, drops = _U64.unpack_from, self.drops
        on_ike, table = self._on_ike, self.table
        ctx_deliver = self.ctx.deliver if self.ctx is not None else None
        ctx_flush = self.ctx.flush if self.ctx is not None else None
        accepts, lifetime = table.accepts, table.lifetime
        gro = tun.GroWriter(fd) if self.offload else None
        self._gro = gro
        add = gro.add if gro else None
        dontwait = socket.MSG_DONTWAIT
        bufs = [sview[:65536]]
        udp_gro = self._udp_gro
        cmsg_space = socket.CMSG_SPACE(4)

        def deliver(pkt: PacketBuffer, n: int, addr: tuple[str, int]) -> None:
            """One UDP datagram at pkt[0:n]."""
            pd = pkt.data
            if n < 8:
                if n == 1 and pd[0] == 0xFF:
                    drops.keepalives += 1
                elif n >= 4 and u32(pd, 0)[0] == 0:
                    self._ike(on_ike, bytes(pkt.view[4:n]), addr)
                else:
                    drops.malformed += 1
                return
            spi = u32(pd, 0)[0]
            if spi == 0:
                self._ike(on_ike, bytes(pkt.view[4:n]), addr)
                return
            entry = table.inbound.get(spi)
            if entry is None:
                try:
                    if ctx_deliver is None or not ctx_deliver(pkt, n, spi, dst, addr):
                        drops.unknown_spi += 1
                except EspError:
                    drops.malformed += 1
                except OSError:
                    drops.tun_errors += 1
                return
            if entry.expired:
                drops.expired += 1
                return
            try:
                k = entry.inb.decapsulate_into(pkt, n, dst)
            except (ReplayedPacket, AuthenticationFailed):
                return  # counted per SA by the codec
            except EspError:
                drops.malformed += 1
                return
            if k < 20 or out[0] >> 4 != 4:
                if k:
                    drops.malformed += 1
                return
            key = key_of(out, 12)[0]
            ok = entry.in_cache.get(key)
            if ok is None:
                ok = accepts(entry, key)
            if not ok:
                drops.policy_in += 1
                entry.counters.policy_dropped += 1
                return
            if addr != entry.addr: follow_peer(entry, spi, addr, self.on_peer_moved)  # noqa: E701 - NAT rebinding
            try:
                if add is None:
                    write(fd, oview[:k])
                else:
                    add(out, oview, k)
            except OSError:
                drops.tun_errors += 1
            c = entry.counters
            if c.bytes_out + c.bytes_in > entry.next_limit:
                lifetime(entry)

        while True:
            size = 0
            try:
                if gro is None:
                    n, addr = recv(data, 65536)
                else:
                    # Drain what is queued without blocking; merged packets go to TUN before we sleep.
                    try:
                        if udp_gro:
                            n, anc, _, addr = recvmsg(bufs, cmsg_space, dontwait)
                        else:
                            n, addr = recv(data, 65536, dontwait)
                    except BlockingIOError:
                        gro.flush()
                        if ctx_flush is not None:
                            ctx_flush()
                        if udp_gro:
                            n, anc, _, addr = recvmsg(bufs, cmsg_space)
                        else:
                            n, addr = recv(data, 65536)
                    if udp_gro and anc:
                        size = _I32N.unpack_from(anc[0][2])[0]  # UDP_GRO: several datagrams of this size
            except OSError:
                if self._closing:
                    return
                continue
            if self._closing:
                return
            try:
                if size and n > size:
                    for off in range(0, n, size):
                        m = min(size, n - off)
                        one.view[:m] = sview[off:off + m]
                        deliver(one, m, addr)
                else:
                    deliver(src, n, addr)
            except OSError:
                if self._closing:
                    return
                drops.tun_errors += 1

    def _ike(self, on_ike: IkeHandler | None, msg: bytes, addr: tuple[str, int]) -> None:
        self.drops.ike_in += 1
        if on_ike is None:
            return
        try:
            on_ike(msg, addr)
        except Exception:  # noqa: BLE001 - a broken IKE handler must not stop the data plane
            log.exception("IKE handler failed for a message from %s:%d", *addr)
