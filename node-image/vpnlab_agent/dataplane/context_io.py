"""The userspace engine's routing contexts at run time (docs/hsvpn.md): a TUN device per context,
one outbound thread for all of them, and the context side of the inbound path.

Which packet belongs to which context is never guessed from its addresses (contexts overlap):
- outbound, by the TUN device it came from: `t-<context>` sits in the context's routing table, so
  the kernel hands us a context's packets only there; the context's SA table picks the SA, and the
  entry's tag goes into the ESP trailer (hsvpn) or the SA is the context's own (per-network);
- inbound, by the SA and the tag the codec read from the trailer: `ContextTables.by_spi`. A tag
  outside the SA's negotiated map is dropped and counted.

One thread reads every context TUN (poll, then drain each ready device), so the codec objects an
HSVPN SA shares across its contexts are only ever used by one sending thread; it has its own
`UdpTx`, so the main outbound thread's batches and ours never share a counter. The SAs here and
those of the engine's main table are disjoint.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from typing import Any

from vpnlab_agent.dataplane import tun
from vpnlab_agent.dataplane.context_tables import ContextEntry, ContextSpec, ContextTables
from vpnlab_agent.dataplane.routes import Route
from vpnlab_agent.dataplane.sa_table import NO_ROUTE, Entry, LifetimeHandler, follow_peer
from vpnlab_agent.dataplane.udp_tx import UdpTx
from vpnlab_agent.esp.ciphers import PacketBuffer
from vpnlab_agent.esp.codec import AuthenticationFailed, ReplayedPacket, SequenceOverflow, max_inner_len
from vpnlab_agent.rtnl import Rtnl
from vpnlab_agent.sa import EspAlgorithm

log = logging.getLogger(__name__)

_GCM = EspAlgorithm("aes-gcm-16", 128)
_U64 = struct.Struct("!Q")
_VNET = struct.Struct("<BBHHHH")
BUF_SIZE = 65536 + 256
TUN_QUEUE = 256
BURST = 64  # packets read from one device before looking at the others


def device(context: str) -> str:
    return f"t-{context}"  # the same name vpnlab_agent.contexts.routing binds to the context


class ContextPlane:
    def __init__(self, contexts: list[ContextSpec], on_lifetime: LifetimeHandler | None, *, offload: bool,
                 tx_thread: bool, budget: int = 1500 - 28) -> None:
        self.tables = ContextTables(contexts, on_lifetime)
        self.offload = offload
        self.tx = UdpTx(None, thread=offload and tx_thread, gso=offload)
        self.budget = budget  # underlay MTU minus outer IPv4 and UDP (the engine keeps it current)
        self.fds: dict[str, int] = {}
        self.ifindex: dict[str, int] = {}
        self.mtu: dict[str, int] = {}
        self.gro: dict[str, tun.GroWriter] = {}
        self.tag_dropped = 0  # received with a tag outside the SA's map
        self.no_route = 0
        self.policy_in = 0
        self._threads: list[threading.Thread] = []
        self.engine: Any = None

    # ---- lifecycle -----------------------------------------------------------------------------

    def open(self, sock: Any, guarded: Callable[[Callable[[], None]], None], engine: Any = None) -> None:
        self.engine = engine  # whose on_peer_moved (set by IKE) hears of NAT rebindings
        if engine is not None:
            self.budget = self.tx.max_datagram = engine.underlay.max_datagram
        for name in self.tables.tables:
            dev = device(name)
            fd = tun.open_tun(dev, vnet_hdr=self.offload)
            self.fds[name] = fd
            if self.offload:
                try:
                    tun.set_offload(fd)
                except OSError:
                    pass
            tun.disable_ipv6(dev)
            self.mtu[name] = max_inner_len(self.budget, _GCM)
            self.ifindex[name] = tun.configure(dev, self.mtu[name], TUN_QUEUE)
            os.set_blocking(fd, False)
            self.gro[name] = tun.GroWriter(fd) if self.offload else None  # type: ignore[assignment]
        self.tx.sock = sock
        loops = [("ctx-out", self._outbound_loop)] + ([("ctx-tx", self.tx.loop)] if self.tx.thread else [])
        self._threads = [threading.Thread(target=guarded, args=(loop,), name=f"esp-{what}", daemon=True)
                         for what, loop in loops]
        for t in self._threads:
            t.start()
        log.info("contexts: %s", ", ".join(f"{device(n)} mtu {m}" for n, m in self.mtu.items()))

    def close(self) -> None:
        self._closing = True
        for name in list(self.fds):
            try:
                tun.delete(device(name))
            except Exception as e:  # noqa: BLE001 - keep closing
                log.warning("deleting %s: %s", device(name), e)
        self.tx.stop()
        for t in self._threads:
            t.join(timeout=2.0)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    _closing = False

    # ---- control plane (under the engine's lock) ----------------------------------------------

    def add(self, entry: Entry) -> None:
        touched = self.tables.add(entry)
        try:
            self.set_mtu(touched)
        except Exception:
            self.tables.remove(entry.sa.spi_in)
            raise

    def remove(self, spi_in: int) -> None:
        self.set_mtu(self.tables.remove(spi_in))

    def last_inbound(self) -> dict[int, float]:
        per_sa = list(self.tables.by_spi.items())  # a copy: install/remove may run meanwhile
        return {spi: next(iter(per.values())).counters.last_in for spi, per in per_sa if per}

    def entry(self, spi_in: int) -> ContextEntry | None:
        """One of the SA's entries (they share its codec objects and counters), or None."""
        per = self.tables.by_spi.get(spi_in)
        return next(iter(per.values())) if per else None

    def follow(self, spi_in: int, addr: tuple[str, int], moved: Callable[[int, tuple[str, int]], None] | None) -> None:
        """The peer's NAT mapping changed: every context entry of the SA sends to `addr` now."""
        per = self.tables.by_spi.get(spi_in) or {}
        for ce in list(per.values())[1:]:
            ce.addr = addr
        follow_peer(next(iter(per.values()), None), spi_in, addr, moved)

    def resize(self, budget: int) -> None:
        """The underlay's MTU changed (or was read again): every context TUN follows it."""
        self.budget = self.tx.max_datagram = budget
        self.set_mtu(list(self.fds))

    def set_mtu(self, names: list[str]) -> None:
        for name in names:
            sas = [e.sa for e in self.tables.tables[name].entries.values()]
            mtu = min((max_inner_len(self.budget, sa.algorithm, sa.trailer) for sa in sas),
                      default=max_inner_len(self.budget, _GCM))
            if mtu != self.mtu.get(name) and not self._closing:
                with Rtnl() as rt:
                    rt.set_link(self.ifindex[name], mtu=mtu)
                self.mtu[name] = mtu

    def retag(self, peer: str, context: str, tag: int) -> int:
        """Fault injection: our entries of `peer` in `context` send `tag` from the next packet on
        (the outbound loop reads it per packet); how many SAs changed."""
        entries = [e for e in self.tables.tables[context].entries.values() if e.sa.name == peer]
        for ce in entries:
            ce.tag = tag  # type: ignore[attr-defined]
        return len(entries)

    def routes(self) -> list[Route]:
        """Each context's remote prefixes via its TUN, in its routing table."""
        out = []
        for name in self.tables.tables:
            t = self.tables.contexts[name].table
            out += [Route(cidr, self.ifindex[name], table=t) for cidr in self.tables.remote_prefixes(name)]
        return out

    def status(self) -> dict[str, Any]:
        return {
            "devices": {device(n): self.mtu.get(n) for n in self.fds},
            "tag_dropped": self.tag_dropped, "no_route": self.no_route, "policy_in": self.policy_in,
            "sas": self.tables.status(),
        }

    # ---- inbound (called by the engine's inbound thread) ----------------------------------------

    def deliver(self, pkt: PacketBuffer, n: int, spi: int, dst: PacketBuffer, addr: tuple[str, int]) -> bool:
        """An ESP datagram whose SPI is not in the main table: False if it is not ours either."""
        per = self.tables.by_spi.get(spi)
        if per is None:
            return False
        home = next(iter(per.values()))
        if home.expired:
            return True
        try:
            k = home.inb.decapsulate_into(pkt, n, dst)
        except (ReplayedPacket, AuthenticationFailed):
            return True  # counted per SA by the codec
        # any other EspError (a malformed trailer, a tagged SA's packet without a tag) goes to
        # the engine's caller, which counts it as malformed
        if k < 20:
            return True
        ce = per.get(home.inb.tag)
        if ce is None:
            self.tag_dropped += 1
            self.tables.tag_dropped[spi] = self.tables.tag_dropped.get(spi, 0) + 1
            return True
        key = _U64.unpack_from(dst.data, 12)[0]
        ok = ce.in_cache.get(key)
        if ok is None:
            ok = self.tables.tables[ce.context].accepts(ce, key)
        if not ok:
            self.policy_in += 1
            ce.counters.policy_dropped += 1
            return True
        if addr != ce.addr:
            self.follow(spi, addr, getattr(self.engine, "on_peer_moved", None))  # NAT rebinding, seen in an authenticated packet
        ce.cc.packets_in += 1
        ce.cc.bytes_in += k
        gro = self.gro.get(ce.context)
        if gro is None:
            os.write(self.fds[ce.context], dst.view[:k])
        else:
            gro.add(dst.data, dst.view, k)
        c = ce.counters
        if c.bytes_out + c.bytes_in > ce.next_limit:
            self.tables.tables[ce.context].lifetime(ce)
        return True

    def flush(self) -> None:
        for gro in self.gro.values():
            if gro is not None:
                gro.flush()

    # ---- outbound ------------------------------------------------------------------------------

    def _outbound_loop(self) -> None:
        poller = select.poll()
        by_fd = {fd: name for name, fd in self.fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        src, seg = PacketBuffer(BUF_SIZE), PacketBuffer(4096)
        data, sview = src.data, src.view
        vnet = bytearray(tun.VNET_HDR_LEN)
        hlen = tun.VNET_HDR_LEN if self.offload else 0
        bufs = [vnet, sview[:65536]] if self.offload else [sview[:65536]]
        readv, key_of, vnet_of = os.readv, _U64.unpack_from, _VNET.unpack_from
        tx = self.tx
        while not self._closing:
            try:
                ready = poller.poll(500)
            except OSError:
                continue
            for fd, _ in ready:
                name = by_fd.get(fd)
                if name is None:
                    continue
                table = self.tables.tables[name]
                for _ in range(BURST):
                    try:
                        n = readv(fd, bufs) - hlen
                    except BlockingIOError:
                        break
                    except OSError:
                        if self._closing:
                            return
                        break
                    if n < 20 or data[0] >> 4 != 4:
                        continue
                    ce = table.route(key_of(data, 12)[0])
                    if ce.__class__ is not ContextEntry:
                        if ce is NO_ROUTE:
                            self.no_route += 1
                        continue
                    self._send(ce, src, n, seg, vnet, vnet_of, tx)

    def _send(self, ce: ContextEntry, src: PacketBuffer, n: int, seg: PacketBuffer, vnet: bytearray,
              vnet_of: Any, tx: UdpTx) -> None:
        c = ce.counters
        if c.bytes_out + c.bytes_in > ce.next_limit:
            self.tables.tables[ce.context].lifetime(ce)
        if ce.expired:
            return
        ce.cc.packets_out += 1
        ce.cc.bytes_out += n
        try:
            if self.offload and (vnet[0] or vnet[1]):
                flags, gso, _, mss, cstart, coff = vnet_of(vnet)
                if gso == tun.VNET_HDR_GSO_TCPV4 and mss > 0 and src.data[9] == 6:
                    tx.seal_tso(ce.out, src, n, mss, seg, ce.addr, ce.tag)
                    return
                if gso:
                    return
                if flags & tun.VNET_HDR_F_NEEDS_CSUM:
                    tun.complete_checksum(src.data, src.view, n, cstart, coff)
            tx.queue_one(ce.out, src, n, ce.addr, ce.tag)
        except SequenceOverflow:
            self.tables.tables[ce.context].lifetime(ce, exhausted=True)
        except OSError:
            pass
