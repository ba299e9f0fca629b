"""The userspace engine's UDP socket and its send path: ESP out of UDP 4500 in UDP GSO batches.

A TSO read (up to 64 kB of one TCP flow) is cut into MSS segments, each sealed straight into a TX
buffer back to back; equal-size runs leave in one sendmsg with UDP_SEGMENT (Linux 4.18). With
`thread=True` a TX thread does the sending, so the outbound loop's next read and encryption
overlap the syscalls (the kernel work runs without the GIL). The hand-off is bounded by the pool
of TX buffers: back-pressure, never growth. A kernel without UDP GSO gets one datagram at a time;
so does a batch whose segments outgrow the underlay's MTU (EMSGSIZE: the link's MTU was lowered
under us), after `on_too_big` told the engine to shrink its TUN MTU.
"""

from __future__ import annotations

import errno
import logging
import queue
import socket
import struct
from collections.abc import Callable
from typing import Any

from vpnlab_agent.dataplane import tun
from vpnlab_agent.esp.ciphers import PacketBuffer
from vpnlab_agent.esp.codec import EspOutbound

log = logging.getLogger(__name__)

UDP_GRO = 104  # receive several same-size datagrams in one buffer, size in a cmsg (Linux 5.0)
UDP_SEGMENT = 103  # setsockopt/cmsg: send one buffer as several datagrams of this size (Linux 4.18)
UDP_GSO_MAX_SEGS = 64
TX_BUFFERS = 8  # encrypted TSO packets waiting for the TX thread
TX_BUF_SIZE = 65536 * 2  # one TSO packet's ESP packets at a usual MSS: 64 kB plus per-segment overhead
ESP_MAX_OVERHEAD = 64  # ESP header 8 + IV 16 + padding 15 + trailer 2 + ICV 16, rounded up (+ trailer extra)
UDP_GSO_MAX_BYTES = 65000  # one UDP payload (IPv4 total length is 16 bits)
_U16N = struct.Struct("=H")  # UDP_SEGMENT value, host order

Addr = tuple[str, int]
Batches = list[tuple[int, int, int]]  # (offset, total bytes, segment size) within one TX buffer


def bind_udp(local_addr: str, port: int, buffer: int, *, gro: bool) -> tuple[socket.socket, bool]:
    """The engine's UDP socket (ESP in UDP and IKE on 4500), and whether UDP GRO is on (if asked)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
        sock.bind((local_addr, port))
    except OSError:
        sock.close()
        raise
    if gro:
        try:
            sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        except OSError:
            gro = False
    return sock, gro


class UdpTx:
    """Counts its send failures in `errors`; the engine adds them to its drops."""

    def __init__(self, sock: socket.socket | None, *, thread: bool = True, gso: bool = True) -> None:
        self.sock = sock
        self.thread = thread
        self.gso = gso
        self.errors = 0
        self.too_big = 0  # GSO batches the kernel refused as larger than the underlay MTU
        self.max_datagram = 1500 - 28  # UDP payload that fits the underlay (the engine keeps it current)
        self.on_too_big: Callable[[], None] | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[PacketBuffer] = queue.SimpleQueue()
        for _ in range(TX_BUFFERS):
            self._free.put(PacketBuffer(TX_BUF_SIZE))
        self.enq = 0  # batches queued, written only by the outbound thread
        self.done = 0  # batches sent, written only by the sender
        self.put: Callable[[tuple[PacketBuffer, Batches, Addr]], None] = self._queue.put if thread else self._send_now

    def busy(self) -> bool:
        """Batches still waiting: a single packet must queue behind them, never overtake."""
        return self.enq != self.done

    def queue_one(self, out: EspOutbound, src: PacketBuffer, n: int, addr: Addr, tag: int = 0) -> None:
        """Seal src[0:n] into a TX buffer and queue it behind the waiting batches."""
        buf = self._free.get()
        try:
            m = out.encapsulate_into(src, n, buf, 0, tag)
        except BaseException:
            self._free.put(buf)
            raise
        self.enq += 1
        self.put((buf, [(0, m, m)], addr))

    def seal_tso(self, out: EspOutbound, src: PacketBuffer, n: int, mss: int, seg: PacketBuffer, addr: Addr,
                 tag: int = 0) -> None:
        """TSO: cut src[0:n] into MSS segments, encrypt them back to back into TX buffers and queue
        those as UDP GSO batches.

        A small MSS makes the ESP packets of one 64 kB read outgrow a buffer (the OpenSSL back end
        writes through a raw pointer, unchecked): a buffer that could not take one more packet is
        queued and the next one taken.
        """
        free_get, segment, put = self._free.get, tun.segment_tcp, self.put
        overhead = ESP_MAX_OVERHEAD + out.extra
        data, sview = src.data, src.view
        buf: PacketBuffer | None = free_get()
        batches: Batches = []
        pos = start = i = cnt = size = 0
        short = False
        try:
            while True:
                k = segment(data, sview, n, mss, seg.data, seg.view, i)
                if not k:
                    break
                i += 1
                if pos + k + overhead > TX_BUF_SIZE:
                    if pos > start:
                        batches.append((start, pos - start, size))
                    self.enq += 1
                    put((buf, batches, addr))  # type: ignore[arg-type]
                    buf, batches = None, []
                    buf = free_get()
                    pos = start = cnt = size = 0
                    short = False
                assert buf is not None
                m = out.encapsulate_into(seg, k, buf, pos, tag)
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
                self._free.put(buf)
            raise
        self.enq += 1
        put((buf, batches, addr))

    def loop(self) -> None:
        """The TX thread: sends what the outbound loop sealed, until stop()."""
        get = self._queue.get
        while True:
            item = get()
            if item is None:
                return
            self._send_now(item)

    def stop(self) -> None:
        self._queue.put(None)

    def _send_now(self, item: tuple[PacketBuffer, Batches, Addr]) -> None:
        buf, batches, addr = item
        sock = self.sock
        assert sock is not None
        try:
            for off, total, size in batches:
                self.send_batch(sock, buf.view[off:off + total], total, size, addr)
        except OSError:
            self.errors += 1
        finally:  # whatever happened, the buffer goes back, or the outbound loop would starve
            self._free.put(buf)
            self.done += 1

    def send_batch(self, sock: socket.socket, view: memoryview, total: int, size: int, addr: Addr) -> None:
        """Send equal-size ESP packets laid back to back (the last may be shorter) in one UDP GSO call."""
        if total > size and self.gso:
            try:
                sock.sendmsg((view[:total],), [(socket.SOL_UDP, UDP_SEGMENT, _U16N.pack(size))], 0, addr)
                return
            except OSError as e:
                if e.errno in (errno.EMSGSIZE, errno.EINVAL) and self.on_too_big is not None:
                    self.on_too_big()  # the engine reads the underlay's MTU again
                if e.errno == errno.EMSGSIZE or (e.errno == errno.EINVAL and size > self.max_datagram):
                    # segments larger than the underlay's MTU (older kernels say EINVAL): GSO is
                    # fine, the MTU is not; this batch goes one by one
                    self.too_big += 1
                elif e.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    raise
                else:
                    self.gso = False  # kernel without UDP GSO: one datagram at a time from now on
                    log.info("no UDP GSO here (%s); sending ESP packets one by one", e.strerror)
        for off in range(0, total, size):
            sock.sendto(view[off:min(off + size, total)], addr)
