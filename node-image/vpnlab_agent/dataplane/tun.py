"""A layer-3 TUN device (no packet-info header) set up through rtnetlink (rtnl.py).

`open_tun()` returns a blocking file descriptor: one read() is one IPv4 packet that the kernel routed
into the device, one write() injects one packet into the kernel as if it arrived on the device.
"""

from __future__ import annotations

import fcntl
import os
import struct
from typing import Any

from vpnlab_agent.rtnl import Rtnl

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
TUN_PATH = "/dev/net/tun"


class TunError(Exception):
    """The TUN device could not be created or configured."""


def open_tun(name: str, *, multi_queue: bool = False, vnet_hdr: bool = False) -> int:
    """Create (or, with multi_queue, attach one more queue to) TUN device `name`; returns the fd.

    vnet_hdr: every read and write starts with a 10-byte virtio_net_hdr (see GroWriter).
    """
    if len(name.encode()) > 15:
        raise TunError(f"interface name {name!r} is longer than 15 bytes")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"cannot open {TUN_PATH}: {e.strerror} (container needs --device /dev/net/tun)") from e
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0) | (IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise TunError(f"TUNSETIFF {name}: {e.strerror}") from e
    return fd


def configure(name: str, mtu: int, txqueuelen: int = 1000) -> int:
    """Set MTU and queue length, bring the device up; returns its ifindex."""
    with Rtnl() as rt:
        idx = rt.link_index(name)
        if idx is None:
            raise TunError(f"TUN device {name} vanished")
        rt.set_link(idx, mtu=mtu, txqlen=txqueuelen, up=True)
    return idx


def disable_ipv6(name: str) -> None:
    """The kernel would otherwise send router solicitations into the tunnel."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass  # no IPv6 in this namespace: nothing to silence


def delete(name: str) -> None:
    """Remove the device if it still exists (it also goes when its last fd closes)."""
    with Rtnl() as rt:
        idx = rt.link_index(name)
        if idx is not None:
            try:
                rt.delete_link(idx)
            except OSError:  # already gone: closing the fd raced us
                pass


# ---- virtio_net_hdr and receive coalescing ------------------------------------------------------

VNET_HDR_LEN = 10
VNET_HDR_F_NEEDS_CSUM = 1
VNET_HDR_GSO_TCPV4 = 1
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_IPH = struct.Struct("!10H")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
GSO_LIMIT = 65535 - 20 - 60  # bytes of TCP payload in one merged packet (IPv4 total length is 16 bits)


def ip_header_checksum(buf: bytearray, off: int) -> int:
    words = _IPH.unpack_from(buf, off)
    s = sum(words) - words[5]  # without the checksum field itself
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class GroWriter:
    """Writes inner IPv4 packets to a TUN fd opened with IFF_VNET_HDR, merging runs of consecutive
    TCP segments of one flow into one GSO packet (what GRO does in a NIC driver).

    The kernel then runs its IP and TCP receive path once per merged packet instead of once per
    1.4 kB segment, and re-segments on its own if the packet is forwarded. Merging follows Linux GRO's
    rules: same flow, next sequence number, identical ACK/window/options/TTL/TOS, only ACK (and PSH on
    the last) flags, every segment but the last exactly the first one's size. A merged packet is
    written with NEEDS_CSUM and the pseudo-header sum, as a NIC would hand it over; the segments'
    integrity was already proven by the ESP ICV.
    """

    __slots__ = ("fd", "buf", "view", "len", "count", "mss", "hlen", "next_seq", "open_for_more", "writes")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray(VNET_HDR_LEN + 65536 + 2048)
        self.view = memoryview(self.buf)
        self.len = 0  # bytes of the pending (merged) packet, after the virtio header
        self.count = 0  # segments in it
        self.mss = 0
        self.hlen = 0
        self.next_seq = 0
        self.open_for_more = False
        self.writes = 0

    def add(self, p: bytearray, v: memoryview, k: int) -> None:
        """Queue the inner packet p[0:k] (v is a memoryview of p); may write earlier packets."""
        if k >= 40 and p[0] == 0x45 and p[9] == 6 and (p[6] & 0x3F) == 0 and p[7] == 0 and (p[33] & 0xF7) == 0x10:
            hl = 20 + ((p[32] >> 4) << 2)
            plen = k - hl
            if plen > 0:
                seq = _U32.unpack_from(p, 24)[0]
                b = self.buf
                if (self.count and self.open_for_more and seq == self.next_seq and hl == self.hlen
                        and plen <= self.mss and self.len + plen <= GSO_LIMIT + hl
                        and p[1] == b[11] and p[8] == b[18]
                        and v[12:24] == self.view[22:34] and v[28:32] == self.view[38:42]
                        and v[34:36] == self.view[44:46] and (hl == 40 or v[40:hl] == self.view[50:10 + hl])):
                    end = VNET_HDR_LEN + self.len
                    b[end:end + plen] = v[hl:k]
                    self.len += plen
                    self.count += 1
                    self.next_seq = (seq + plen) & 0xFFFFFFFF
                    self.open_for_more = plen == self.mss
                    if p[33] & 0x08:  # PSH: the sender wants it delivered now
                        b[VNET_HDR_LEN + 33] |= 0x08
                        self.flush()
                    return
                self.flush()
                self.buf[VNET_HDR_LEN:VNET_HDR_LEN + k] = v[:k]
                self.len, self.count, self.mss, self.hlen = k, 1, plen, hl
                self.next_seq = (seq + plen) & 0xFFFFFFFF
                self.open_for_more = not p[33] & 0x08
                return
        self.flush()
        os.writev(self.fd, (ZERO_VNET_HDR, v[:k]))
        self.writes += 1

    def flush(self) -> None:
        n = self.count
        if not n:
            return
        b = self.buf
        if n == 1:
            b[0:VNET_HDR_LEN] = ZERO_VNET_HDR
        else:
            total = self.len
            _U16.pack_into(b, VNET_HDR_LEN + 2, total)
            _U16.pack_into(b, VNET_HDR_LEN + 10, ip_header_checksum(b, VNET_HDR_LEN))
            s = sum(struct.unpack_from("!4H", b, VNET_HDR_LEN + 12)) + 6 + total - 20
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            _U16.pack_into(b, VNET_HDR_LEN + 36, s)  # pseudo-header sum; the kernel finishes it
            _VNET.pack_into(b, 0, VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_TCPV4, self.hlen, self.mss, 20, 16)
        self.count = 0
        try:
            os.write(self.fd, self.view[:VNET_HDR_LEN + self.len])
        finally:
            self.writes += 1

    def stats(self) -> dict[str, Any]:
        return {"tun_writes": self.writes}


# ---- transmit side: checksum completion and TCP segmentation of what the kernel hands us --------

TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
_from_bytes = int.from_bytes


def set_offload(fd: int, flags: int = TUN_F_CSUM | TUN_F_TSO4) -> None:
    """Let the kernel hand us checksum-less and TSO (up to 64 kB) TCP packets; we finish them."""
    fcntl.ioctl(fd, TUNSETOFFLOAD, flags)


def _fold(v: int) -> int:
    """One's complement checksum of a big-endian number made of 16-bit words (v % 0xFFFF trick)."""
    if not v:
        return 0xFFFF
    s = v % 0xFFFF
    return 0xFFFF - s if s else 0  # ~sum; a non-zero multiple of 0xFFFF sums to all ones


def complete_checksum(p: bytearray, v: memoryview, n: int, start: int, offset: int) -> None:
    """NEEDS_CSUM: the field at start+offset holds the pseudo-header sum; sum from start to the end."""
    x = _from_bytes(v[start:n], "big")
    if (n - start) & 1:
        x <<= 8
    c = _fold(x)
    if c == 0 and offset == 6:
        c = 0xFFFF  # UDP: a computed zero goes out as all ones; zero means "no checksum" (RFC 768)
    _U16.pack_into(p, start + offset, c)


def segment_tcp(src: bytearray, sv: memoryview, n: int, mss: int, out: bytearray, ov: memoryview, i: int) -> int:
    """Write segment i of the TSO packet src[0:n] (IPv4, TCP) into out[0:]; returns its length or 0 past the end.

    Headers are copied and fixed up as the kernel's software GSO would: total length, IP ID + i, IP
    checksum, sequence number, FIN/PSH only on the last segment, CWR only on the first, TCP checksum.
    """
    ihl = (src[0] & 15) << 2
    hl = ihl + ((src[ihl + 12] >> 4) << 2)
    start = hl + i * mss
    if start >= n:
        return 0
    plen = min(mss, n - start)
    ov[0:hl] = sv[0:hl]
    ov[hl:hl + plen] = sv[start:start + plen]
    total = hl + plen
    _U16.pack_into(out, 2, total)
    _U16.pack_into(out, 4, (_U16.unpack_from(src, 4)[0] + i) & 0xFFFF)
    _U16.pack_into(out, 10, ip_header_checksum(out, 0))
    _U32.pack_into(out, ihl + 4, (_U32.unpack_from(src, ihl + 4)[0] + i * mss) & 0xFFFFFFFF)
    if start + plen < n:
        out[ihl + 13] &= 0xF6  # FIN and PSH belong to the last segment
    if i:
        out[ihl + 13] &= 0x7F  # CWR to the first
    out[ihl + 16] = out[ihl + 17] = 0
    tcp_len = total - ihl
    a, b = _U32.unpack_from(out, 12)[0], _U32.unpack_from(out, 16)[0]
    pseudo = (a >> 16) + (a & 0xFFFF) + (b >> 16) + (b & 0xFFFF) + 6 + tcp_len
    x = _from_bytes(ov[ihl:total], "big")
    if tcp_len & 1:
        x <<= 8
    _U16.pack_into(out, ihl + 16, _fold(x + pseudo))
    return total
