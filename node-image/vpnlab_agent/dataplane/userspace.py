"""Userspace ESP-in-UDP engine over a TUN device, for kernels without ESP (as on the lab machines).

Threads, each with blocking I/O and its own preallocated buffers:
- outbound: read an inner packet from TUN `ipsec0`, find the SA by longest-prefix match of the inner
  destination over the installed SAs' remote selectors (memoised per (src, dst) pair), check the
  inner source is inside the SA's local selectors, encrypt, send on the UDP 4500 socket;
- inbound: receive a datagram, hand IKE (non-ESP marker) to `on_ike`, ignore NAT-keepalives, look the
  SPI up, check replay window and ICV, decrypt, check the inner addresses against the SA's selectors
  (a peer may only send what it negotiated), write the packet to TUN;
- tx (offload mode): sends the UDP GSO batches the outbound thread prepared, so that thread's next
  read and encryption overlap the send syscall (the kernel work runs without the GIL).

Per-packet kernel work, not Python, dominated at first (TUN read/write, UDP send/receive, the TCP
stack for every 1.4 kB segment). Offload mode (the default) amortises it the way NIC drivers do:
- TUN with IFF_VNET_HDR and TSO/checksum offload: TCP hands us up to 64 kB at once; we cut it into
  MSS segments and compute their checksums (tun.segment_tcp);
- UDP GSO (UDP_SEGMENT): the ESP packets of one such read leave in one sendmsg;
- UDP GRO: the receiver gets them back in one recvmsg;
- GRO on the TUN (tun.GroWriter): consecutive received segments of one flow go back into the kernel
  as one GSO packet.
Measured on the 2-core lab machine under load (benchmarks/esp_throughput.py): one TCP stream
~200 Mbit/s without offloads, ~400-560 Mbit/s with them; strongSwan kernel-libipsec 140-250.

Control-plane changes (install/remove) build new lookup tables and swap them in with one assignment,
so the packet loops never take a lock.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyroute2 import IPRoute

from vpnlab_agent.dataplane import tun
from vpnlab_agent.dataplane.base import NATT_PORT, NON_ESP_MARKER, Engine, EngineError, IkeHandler
from vpnlab_agent.esp.ciphers import BACKEND, PacketBuffer
from vpnlab_agent.esp.codec import (
    AuthenticationFailed,
    EspError,
    EspInbound,
    EspOutbound,
    ReplayedPacket,
    SequenceOverflow,
    max_inner_len,
)
from vpnlab_agent.esp.trailer import trailer_from_dict
from vpnlab_agent.sa import ChildSA, EspAlgorithm, SACounters

log = logging.getLogger(__name__)

DEVICE = "ipsec0"
UNDERLAY_MTU = 1500
OUTER_HEADERS = 20 + 8  # outer IPv4 + UDP (RFC 3948)
SOCKET_BUFFER = 1 << 20  # ~700 ESP packets of burst at the receiver
TUN_QUEUE = 256  # packets (a TSO packet counts as one); bounded queues keep latency down
CACHE_LIMIT = 4096  # memoised (src, dst) decisions per table; cleared when full
BUF_SIZE = 65536 + 256
_GCM = EspAlgorithm("aes-gcm-16", 128)

_U32 = struct.Struct("!I")
_U16N = struct.Struct("=H")  # UDP_SEGMENT value, host order
_I32N = struct.Struct("=i")  # UDP_GRO cmsg value, host order
_VNET = struct.Struct("<BBHHHH")
UDP_SEGMENT = 103  # setsockopt/cmsg: send one buffer as several datagrams of this size (Linux 4.18)
UDP_GRO = 104  # receive several same-size datagrams in one buffer, size in a cmsg (Linux 5.0)
UDP_GSO_MAX_SEGS = 64
TX_BUFFERS = 8  # encrypted TSO packets waiting for the TX thread
TX_BUF_SIZE = 65536 * 2  # one TSO packet's ESP packets at a usual MSS: 64 kB plus per-segment overhead
ESP_MAX_OVERHEAD = 64  # ESP header 8 + IV 16 + padding 15 + trailer 2 + ICV 16, rounded up
UDP_GSO_MAX_BYTES = 65000  # one UDP payload (IPv4 total length is 16 bits)
_U64 = struct.Struct("!Q")  # inner source || destination, one dict key

_NO_ROUTE = object()  # memoised outbound verdicts besides an entry
_POLICY = object()

# on_lifetime(spi_in, hard): the SA crossed its soft (hard=False) or hard byte lifetime (bytes both ways),
# or ran out of sequence numbers (hard). Called once each, from a packet thread: hand it over to the
# IKE event loop thread-safely. After a hard expiry the SA passes nothing until it is removed.
LifetimeHandler = Callable[[int, bool], None]


def _nets(cidrs: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    out = []
    for c in cidrs:
        n = ipaddress.IPv4Network(c, strict=False)
        out.append((int(n.network_address), int(n.netmask)))
    return tuple(out)


def _inside(addr: int, nets: tuple[tuple[int, int], ...]) -> bool:
    for net, mask in nets:
        if addr & mask == net:
            return True
    return False


@dataclass(eq=False)
class _Entry:
    """One installed SA pair with everything the packet loops need precomputed."""

    sa: ChildSA
    out: EspOutbound
    inb: EspInbound
    counters: SACounters
    addr: tuple[str, int]
    local_nets: tuple[tuple[int, int], ...]
    remote_nets: tuple[tuple[int, int], ...]
    next_limit: float  # bytes (both ways) at which the next lifetime event fires
    in_cache: dict[int, bool] = field(default_factory=dict)
    soft_fired: bool = False
    expired: bool = False


@dataclass
class _Drops:
    no_route: int = 0  # outbound: no SA covers the inner destination
    policy_out: int = 0  # outbound: inner source outside the SA's local selectors
    not_ipv4: int = 0
    unknown_spi: int = 0
    malformed: int = 0  # inbound: too short, bad padding/next header, invalid inner packet
    policy_in: int = 0
    expired: int = 0  # sequence numbers or hard byte lifetime used up
    send_errors: int = 0
    tun_errors: int = 0
    internal_errors: int = 0  # a packet loop hit a bug and was restarted (see the log)
    keepalives: int = 0
    ike_in: int = 0


class UserspaceEngine(Engine):
    name: ClassVar[str] = "userspace"

    def __init__(self, *, route_src: str | None = None, device: str = DEVICE,
                 underlay_mtu: int = UNDERLAY_MTU, on_lifetime: LifetimeHandler | None = None,
                 offload: bool = True, tx_thread: bool = True) -> None:
        super().__init__(route_src=route_src)
        # offload: TSO/checksum offload on the TUN (we cut and finish TCP segments), UDP GSO to send
        # ESP packets in batches, UDP GRO to receive them in batches, and received TCP segments merged
        # into GSO packets on the TUN (tun.GroWriter). Each falls back alone if the kernel says no.
        self.offload = offload
        self.tx_thread = offload and tx_thread  # a third thread that only sends (offload mode)
        self._gro: tun.GroWriter | None = None
        self._udp_gso = offload
        self._udp_gro = False
        # outbound -> TX thread hand-off: bounded by the pool of TX buffers (back-pressure, not growth)
        self._tx_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._tx_free: queue.SimpleQueue[PacketBuffer] = queue.SimpleQueue()
        for _ in range(TX_BUFFERS):
            self._tx_free.put(PacketBuffer(TX_BUF_SIZE))
        self.tso_reads = 0  # TSO packets the kernel handed us (each cut into many ESP packets)
        self._enq = 0  # batches queued, written only by the outbound thread
        self._done = 0  # batches sent, written only by the TX thread
        self.device = device
        self.underlay_mtu = underlay_mtu
        self.on_lifetime = on_lifetime
        self.drops = _Drops()
        self._lock = threading.Lock()  # serialises control-plane changes only
        self._entries: dict[int, _Entry] = {}  # spi_in -> entry, in install order
        self._inbound: dict[int, _Entry] = {}  # read by the inbound loop; replaced, never mutated
        self._current: dict[int, _Entry] = {}  # reqid -> newest entry, which carries outbound traffic
        self._table: list[tuple[int, dict[int, _Entry]]] = []  # (mask, {net: entry}), longest first
        self._out_cache: dict[int, Any] = {}  # (src, dst) -> _Entry, _NO_ROUTE or _POLICY
        self._routes: set[str] = set()
        self._pins: set[str] = set()
        self._sock: socket.socket | None = None
        self._tun_fd = -1
        self._ifindex = 0
        self._mtu = 0
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._on_ike: IkeHandler | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    def open(self, local_addr: str, on_ike: IkeHandler, port: int = NATT_PORT) -> None:
        if self._sock is not None:
            raise EngineError("userspace engine is already open")
        self._on_ike = on_ike
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind((local_addr, port))
            if self.offload:
                try:
                    sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
                    self._udp_gro = True
                except OSError:
                    self._udp_gro = False
        except OSError as e:
            sock.close()
            raise EngineError(f"cannot bind UDP {local_addr}:{port}: {e.strerror}") from e
        try:
            self._tun_fd = tun.open_tun(self.device, vnet_hdr=self.offload)
            if self.offload:
                try:
                    tun.set_offload(self._tun_fd)
                except OSError as e:
                    log.info("no TUN offloads (%s): packets come one MTU at a time", e.strerror)
            self._disable_ipv6()
            self._mtu = max_inner_len(self.underlay_mtu - OUTER_HEADERS, _GCM)
            self._ifindex = tun.configure(self.device, self._mtu, TUN_QUEUE)
        except (tun.TunError, OSError) as e:
            sock.close()
            if self._tun_fd >= 0:
                os.close(self._tun_fd)
                self._tun_fd = -1
            raise EngineError(f"cannot set up {self.device}: {e}") from e
        self._sock = sock
        self._closing = False
        loops = [("out", self._outbound_loop), ("in", self._inbound_loop)]
        if self.tx_thread:
            loops.append(("tx", self._tx_loop))
        self._threads = [threading.Thread(target=self._guarded, args=(loop,), name=f"esp-{what}-{self.device}",
                                          daemon=True) for what, loop in loops]
        for t in self._threads:
            t.start()
        log.info("userspace engine up: %s mtu %d, UDP %s:%d, crypto %s", self.device, self._mtu,
                 local_addr, port, BACKEND)

    def _disable_ipv6(self) -> None:
        # The kernel would otherwise send router solicitations into the tunnel.
        try:
            with open(f"/proc/sys/net/ipv6/conf/{self.device}/disable_ipv6", "w") as f:
                f.write("1")
        except OSError:
            pass  # no IPv6 in this namespace: nothing to silence

    def close(self) -> None:
        if self._sock is None:
            return
        self._closing = True
        with self._lock:
            for spi in list(self._entries):
                self._remove_locked(spi)
            self._unpin_all()
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
        self._tx_queue.put(None)
        for t in self._threads:
            t.join(timeout=2.0)
        sock.close()
        if self._tun_fd >= 0:
            os.close(self._tun_fd)
            self._tun_fd = -1
        self._threads = []

    # ---- control plane ---------------------------------------------------------------------

    def send_ike(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._sock is None:
            raise EngineError("userspace engine is not open")
        try:
            self._sock.sendto(NON_ESP_MARKER + data, addr)
        except OSError as e:
            raise EngineError(f"sending IKE to {addr[0]}:{addr[1]}: {e.strerror}") from e

    def install(self, sa: ChildSA) -> None:
        if self._sock is None:
            raise EngineError("userspace engine is not open")
        if not sa.encap:
            raise EngineError(f"SA {sa.name}: the userspace engine only does ESP in UDP (remote_port is 0)")
        counters = SACounters()
        try:
            out = EspOutbound(sa.spi_out, sa.algorithm, sa.enc_key_out, sa.integ_key_out, counters)
            inb = EspInbound(sa.spi_in, sa.algorithm, sa.enc_key_in, sa.integ_key_in, counters)
            local_nets, remote_nets = _nets(sa.local_ts), _nets(sa.remote_ts)
        except ValueError as e:
            raise EngineError(f"SA {sa.name} (SPI {sa.spi_in:#010x}): {e}") from e
        limits = [x for x in (sa.soft_lifetime_bytes, sa.hard_lifetime_bytes) if x]
        entry = _Entry(sa, out, inb, counters, (sa.remote_addr, sa.remote_port), local_nets, remote_nets,
                       float(min(limits)) if limits else float("inf"))
        with self._lock:
            if sa.spi_in in self._entries:
                raise EngineError(f"SA with inbound SPI {sa.spi_in:#010x} is already installed")
            previous = self._current.get(sa.reqid)
            self._entries[sa.spi_in] = entry
            self._inbound = {**self._inbound, sa.spi_in: entry}
            self._current[sa.reqid] = entry  # make-before-break: outbound moves now
            try:
                self._set_mtu()
                self._sync_routes()
            except Exception as e:
                # leave the engine as it was: the SA is either fully installed or not at all
                del self._entries[sa.spi_in]
                self._inbound = {k: v for k, v in self._inbound.items() if k != sa.spi_in}
                if previous is None:
                    del self._current[sa.reqid]
                else:
                    self._current[sa.reqid] = previous
                self._set_mtu()
                self._sync_routes()
                if isinstance(e, EngineError):
                    raise
                raise EngineError(f"installing SA {sa.name} (SPI {sa.spi_in:#010x}): {e}") from e
            finally:
                self._rebuild()

    def remove(self, spi_in: int) -> None:
        with self._lock:
            if spi_in not in self._entries:
                raise EngineError(f"no SA with inbound SPI {spi_in:#010x}")
            self._remove_locked(spi_in)
            self._set_mtu()
            self._sync_routes()
            self._rebuild()

    def _remove_locked(self, spi_in: int) -> None:
        entry = self._entries.pop(spi_in)
        self._inbound = {k: v for k, v in self._inbound.items() if k != spi_in}
        reqid = entry.sa.reqid
        if self._current.get(reqid) is entry:
            older = [e for e in self._entries.values() if e.sa.reqid == reqid]
            if older:
                self._current[reqid] = older[-1]
            else:
                del self._current[reqid]
        if self._closing:
            self._current.pop(reqid, None)

    def _rebuild(self) -> None:
        by_len: dict[int, dict[int, _Entry]] = {}
        for entry in self._current.values():
            for net, mask in entry.remote_nets:
                by_len.setdefault(mask, {}).setdefault(net, entry)
        self._table = sorted(by_len.items(), key=lambda kv: -kv[0])
        self._out_cache = {}
        for entry in self._entries.values():
            entry.in_cache = {}

    def _set_mtu(self) -> None:
        algs = {e.sa.algorithm for e in self._entries.values()} or {_GCM}
        mtu = min(max_inner_len(self.underlay_mtu - OUTER_HEADERS, a) for a in algs)
        if mtu != self._mtu and not self._closing:
            with IPRoute() as ipr:
                ipr.link("set", index=self._ifindex, mtu=mtu)
            self._mtu = mtu

    def _sync_routes(self) -> None:
        wanted = {str(ipaddress.IPv4Network(c, strict=False)) for e in self._current.values() for c in e.sa.remote_ts}
        if self._closing:
            wanted = set()
        with IPRoute() as ipr:
            for cidr in sorted(self._routes - wanted):
                try:
                    ipr.route("del", dst=cidr, oif=self._ifindex)
                except Exception as e:  # noqa: BLE001 - the device may be gone already
                    log.debug("route del %s: %s", cidr, e)
            for entry in self._current.values():
                self._pin_peer(ipr, entry)
            for cidr in sorted(wanted - self._routes):
                kw: dict[str, Any] = {"dst": cidr, "oif": self._ifindex}
                if self.route_src:
                    kw["prefsrc"] = self.route_src
                try:
                    ipr.route("replace", **kw)
                except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError and others
                    raise EngineError(f"route {cidr} dev {self.device}: {e}") from e
        self._routes = wanted

    def _pin_peer(self, ipr: IPRoute, entry: _Entry) -> None:
        """If a remote selector covers the peer itself (e.g. 0.0.0.0/0), keep ESP to it off the tunnel."""
        peer = entry.sa.remote_addr
        if peer in self._pins or not _inside(int(ipaddress.IPv4Address(peer)), entry.remote_nets):
            return
        found = ipr.route("get", dst=peer)
        if not found:
            raise EngineError(f"no underlay route to peer {peer}")
        r = found[0]
        kw: dict[str, Any] = {"dst": f"{peer}/32", "oif": r.get_attr("RTA_OIF")}
        if r.get_attr("RTA_GATEWAY"):
            kw["gateway"] = r.get_attr("RTA_GATEWAY")
        ipr.route("replace", **kw)
        self._pins.add(peer)

    def _unpin_all(self) -> None:
        with IPRoute() as ipr:
            for peer in self._pins:
                try:
                    ipr.route("del", dst=f"{peer}/32")
                except Exception:  # noqa: BLE001
                    pass
        self._pins.clear()

    def counters(self, spi_in: int) -> SACounters:
        entry = self._entries.get(spi_in)
        if entry is None:
            raise EngineError(f"no SA with inbound SPI {spi_in:#010x}")
        return dataclasses.replace(entry.counters)

    def status(self) -> dict[str, Any]:
        entries = list(self._entries.values())  # copies first: install/remove may run meanwhile
        current = {id(e) for e in list(self._current.values())}
        return {
            "engine": self.name,
            "device": self.device,
            "mtu": self._mtu,
            "crypto": BACKEND,
            "offload": {"tun": self.offload, "udp_gso": self._udp_gso, "udp_gro": self._udp_gro},
            "tun_writes": self._gro.writes if self._gro else None,
            "tso_reads": self.tso_reads,
            "sa_count": len(entries),
            "drops": dataclasses.asdict(self.drops),
            "sas": [
                {
                    "name": e.sa.name, "reqid": e.sa.reqid, "spi_in": e.sa.spi_in, "spi_out": e.sa.spi_out,
                    "outbound": id(e) in current, "expired": e.expired,
                    "local_ts": list(e.sa.local_ts), "remote_ts": list(e.sa.remote_ts),
                    **dataclasses.asdict(e.counters),
                }
                for e in entries
            ],
        }

    # ---- lifetimes -------------------------------------------------------------------------

    def _lifetime(self, entry: _Entry, exhausted: bool = False) -> None:
        """Called from a packet loop when an SA's byte count crossed entry.next_limit, or (exhausted)
        when its sequence numbers ran out."""
        sa, used = entry.sa, entry.counters.bytes_in + entry.counters.bytes_out
        hard = exhausted or (bool(sa.hard_lifetime_bytes) and used >= sa.hard_lifetime_bytes)
        if entry.expired:
            return
        if hard:
            entry.expired = True
            entry.next_limit = float("inf")
        elif not entry.soft_fired:
            entry.soft_fired = True
            entry.next_limit = float(sa.hard_lifetime_bytes) if sa.hard_lifetime_bytes else float("inf")
        else:
            return
        if self.on_lifetime is not None:
            try:
                self.on_lifetime(sa.spi_in, hard)
            except Exception:  # noqa: BLE001 - never let a callback kill a packet loop
                log.exception("lifetime handler failed for SPI %#010x", sa.spi_in)

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

    def _lookup_out(self, key: int) -> _Entry | object:
        """Slow path: longest-prefix match on the inner destination, then the source check."""
        src, dst = key >> 32, key & 0xFFFFFFFF
        for mask, nets in self._table:
            entry = nets.get(dst & mask)
            if entry is not None:
                return entry if _inside(src, entry.local_nets) else _POLICY
        return _NO_ROUTE

    def _route(self, key: int) -> Any:
        """The entry for an inner (src, dst) pair, or _NO_ROUTE / _POLICY; memoised."""
        cache = self._out_cache
        entry = cache.get(key)
        if entry is None:
            entry = self._lookup_out(key)
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[key] = entry
        return entry

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
        route = self._route
        tx_put, free_get, free_put = self._tx_queue.put, self._tx_free.get, self._tx_free.put
        if not self.tx_thread:
            tx_put = self._tx_one
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
            if entry.__class__ is not _Entry:
                if entry is _NO_ROUTE:
                    drops.no_route += 1
                else:
                    drops.policy_out += 1
                continue
            c = entry.counters
            if c.bytes_out + c.bytes_in > entry.next_limit:
                self._lifetime(entry)
            if entry.expired:
                drops.expired += 1
                continue
            out, addr = entry.out, entry.addr
            try:
                if offload and (vnet[0] or vnet[1]):
                    flags, gso, _, mss, cstart, coff = vnet_of(vnet)
                    if gso == tun.VNET_HDR_GSO_TCPV4 and mss > 0 and data[9] == 6:
                        self.tso_reads += 1
                        self._seal_tso(out, src, n, mss, seg, addr, tx_put)
                        continue
                    if gso:
                        drops.not_ipv4 += 1  # a GSO type we never offered
                        continue
                    if flags & tun.VNET_HDR_F_NEEDS_CSUM:
                        complete(data, sview, n, cstart, coff)
                if self._enq != self._done:
                    # the TX thread still has batches: queue behind them, never overtake
                    buf = free_get()
                    try:
                        m = out.encapsulate_into(src, n, buf)
                    except BaseException:
                        free_put(buf)
                        raise
                    self._enq += 1
                    tx_put((buf, [(0, m, m)], addr))
                    continue
                m = out.encapsulate_into(src, n, dst)
                sendto(dview[:m], addr)
            except SequenceOverflow:
                drops.expired += 1
                self._lifetime(entry, exhausted=True)
                continue
            except OSError:
                drops.send_errors += 1

    def _seal_tso(self, out: EspOutbound, src: PacketBuffer, n: int, mss: int, seg: PacketBuffer,
                  addr: tuple[str, int], tx_put: Callable[[Any], None]) -> None:
        """TSO: cut src[0:n] into MSS segments, encrypt them back to back into TX buffers and queue
        those as UDP GSO batches, so the TX thread sends while the outbound loop reads the next one.

        A small MSS makes the ESP packets of one 64 kB read outgrow a buffer (the OpenSSL back end
        writes through a raw pointer, unchecked): a buffer that could not take one more packet is
        queued and the next one taken.
        """
        free_get, segment = self._tx_free.get, tun.segment_tcp
        data, sview = src.data, src.view
        buf: PacketBuffer | None = free_get()
        batches: list[tuple[int, int, int]] = []
        pos = start = i = cnt = size = 0
        short = False
        try:
            while True:
                k = segment(data, sview, n, mss, seg.data, seg.view, i)
                if not k:
                    break
                i += 1
                if pos + k + ESP_MAX_OVERHEAD > TX_BUF_SIZE:
                    if pos > start:
                        batches.append((start, pos - start, size))
                    self._enq += 1
                    tx_put((buf, batches, addr))
                    buf, batches = None, []
                    buf = free_get()
                    pos = start = cnt = size = 0
                    short = False
                assert buf is not None
                m = out.encapsulate_into(seg, k, buf, pos)
                if cnt and (m > size or short):
                    # UDP GSO needs equal sizes with only the last one shorter
                    batches.append((start, pos - start, size))
                    start, cnt, size = pos, 0, 0
                size = size or m
                short = m < size
                pos += m
                cnt += 1
                if pos - start + size > UDP_GSO_MAX_BYTES or cnt == UDP_GSO_MAX_SEGS:
                    batches.append((start, pos - start, size))
                    start, cnt, size, short = pos, 0, 0, False
            if pos > start:
                batches.append((start, pos - start, size))
        except BaseException:
            if buf is not None:
                self._tx_free.put(buf)
            raise
        self._enq += 1
        tx_put((buf, batches, addr))

    def _tx_loop(self) -> None:
        """Sends what the outbound loop encrypted, so its next read and encryption overlap our syscalls."""
        sock = self._sock
        assert sock is not None
        sendto, sendmsg, get, free_put, drops = sock.sendto, sock.sendmsg, self._tx_queue.get, self._tx_free.put, self.drops
        while True:
            item = get()
            if item is None:
                return
            buf, batches, addr = item
            try:
                for off, total, size in batches:
                    self._send_batch(sendto, sendmsg, buf.view[off:off + total], total, size, addr)
            except OSError:
                drops.send_errors += 1
            finally:  # whatever happened, the buffer goes back, or the outbound loop would starve
                free_put(buf)
                self._done += 1

    def _tx_one(self, item: tuple[PacketBuffer, list[tuple[int, int, int]], tuple[str, int]]) -> None:
        """tx_thread=False: send a queued item at once, from the outbound thread."""
        sock = self._sock
        assert sock is not None
        buf, batches, addr = item
        try:
            for off, total, size in batches:
                self._send_batch(sock.sendto, sock.sendmsg, buf.view[off:off + total], total, size, addr)
        except OSError:
            self.drops.send_errors += 1
        finally:
            self._tx_free.put(buf)
            self._done += 1

    def _send_batch(self, sendto: Any, sendmsg: Any, view: memoryview, total: int, size: int,
                    addr: tuple[str, int]) -> None:
        """Send equal-size ESP packets laid back to back (the last may be shorter) in one UDP GSO call."""
        if total > size and self._udp_gso:
            try:
                sendmsg((view[:total],), [(socket.SOL_UDP, UDP_SEGMENT, _U16N.pack(size))], 0, addr)
                return
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    raise
                self._udp_gso = False  # kernel without UDP GSO: one datagram at a time from now on
                log.info("no UDP GSO here (%s); sending ESP packets one by one", e.strerror)
        for off in range(0, total, size):
            sendto(view[off:min(off + size, total)], addr)

    def _inbound_loop(self) -> None:
        fd, sock = self._tun_fd, self._sock
        assert sock is not None
        # one: a datagram split off a UDP GRO batch; as large as any datagram (a peer's MTU may exceed ours)
        src, one, dst = PacketBuffer(BUF_SIZE), PacketBuffer(BUF_SIZE), PacketBuffer(BUF_SIZE)
        data, sview, out, oview = src.data, src.view, dst.data, dst.view
        recv, recvmsg, write, u32 = sock.recvfrom_into, sock.recvmsg_into, os.write, _U32.unpack_from
        key_of, drops = _U64.unpack_from, self.drops
        on_ike = self._on_ike
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
            entry = self._inbound.get(spi)
            if entry is None:
                drops.unknown_spi += 1
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
            cache = entry.in_cache
            ok = cache.get(key)
            if ok is None:
                ok = _inside(key >> 32, entry.remote_nets) and _inside(key & 0xFFFFFFFF, entry.local_nets)
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[key] = ok
            if not ok:
                drops.policy_in += 1
                entry.counters.policy_dropped += 1
                return
            try:
                if add is None:
                    write(fd, oview[:k])
                else:
                    add(out, oview, k)
            except OSError:
                drops.tun_errors += 1
            c = entry.counters
            if c.bytes_out + c.bytes_in > entry.next_limit:
                self._lifetime(entry)

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


# ---- a standalone engine process, driven by JSON lines (tests and benchmarks, no IKE) ------------

def sa_to_dict(sa: ChildSA) -> dict[str, Any]:
    d = dataclasses.asdict(sa)
    for k in ("enc_key_in", "enc_key_out", "integ_key_in", "integ_key_out"):
        d[k] = d[k].hex()
    d["trailer"] = sa.trailer.describe()
    return d


def sa_from_dict(d: dict[str, Any]) -> ChildSA:
    d = dict(d)
    d["algorithm"] = EspAlgorithm(**d["algorithm"])
    for k in ("enc_key_in", "enc_key_out", "integ_key_in", "integ_key_out"):
        d[k] = bytes.fromhex(d[k])
    d["local_ts"], d["remote_ts"] = tuple(d["local_ts"]), tuple(d["remote_ts"])
    if "trailer" in d:
        d["trailer"] = trailer_from_dict(d["trailer"])
    return ChildSA(**d)


def serve(stdin: Any, stdout: Any) -> None:
    """One JSON command per line in, one JSON reply per line out.

    {"op": "open", "local_addr": ..., "route_src": ..., "port": 4500} | {"op": "install", "sa": {...}}
    | {"op": "remove", "spi_in": n} | {"op": "counters", "spi_in": n} | {"op": "status"} | {"op": "close"}
    """
    import json

    engine: UserspaceEngine | None = None
    ike_seen: list[int] = [0]
    lifetime_events: list[list[int | bool]] = []

    def on_ike(msg: bytes, addr: tuple[str, int]) -> None:
        ike_seen[0] += 1

    def on_lifetime(spi_in: int, hard: bool) -> None:
        if len(lifetime_events) < 1000:
            lifetime_events.append([spi_in, hard])

    for line in stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        reply: dict[str, Any] = {"ok": True}
        try:
            if op == "open":
                engine = UserspaceEngine(route_src=cmd.get("route_src"), on_lifetime=on_lifetime,
                                         offload=cmd.get("offload", True),
                                         tx_thread=cmd.get("tx_thread", True))
                engine.open(cmd["local_addr"], on_ike, cmd.get("port", NATT_PORT))
            elif engine is None:
                raise EngineError("engine not open")
            elif op == "install":
                engine.install(sa_from_dict(cmd["sa"]))
            elif op == "remove":
                engine.remove(cmd["spi_in"])
            elif op == "counters":
                reply["counters"] = dataclasses.asdict(engine.counters(cmd["spi_in"]))
            elif op == "status":
                reply["status"] = engine.status()
                reply["ike_seen"] = ike_seen[0]
                reply["lifetime_events"] = list(lifetime_events)
            elif op == "close":
                engine.close()
                stdout.write(json.dumps(reply) + "\n")
                stdout.flush()
                return
            else:
                raise EngineError(f"unknown op {op!r}")
        except EngineError as e:
            reply = {"ok": False, "error": str(e)}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
    if engine is not None:
        engine.close()


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    serve(sys.stdin, sys.stdout)
