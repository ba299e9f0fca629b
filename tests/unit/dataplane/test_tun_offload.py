"""TUN offload helpers: TSO segmentation, checksum completion, receive-side merging (GroWriter).

Every checksum is verified with a plain reference implementation written here; merged packets are
cut again with segment_tcp and must give back the original segments byte for byte.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

from vpnlab_agent.dataplane import tun

SRC, DST = bytes([10, 1, 0, 10]), bytes([10, 2, 0, 10])


def csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def tcp_packet(payload: bytes, seq: int = 1000, flags: int = 0x10, ts: int = 7, ident: int = 0x1234,
               sport: int = 40000, partial: bool = False) -> bytearray:
    opts = struct.pack("!BBBBII", 1, 1, 8, 10, ts, 99)  # NOP NOP timestamps
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 5201, seq, 555, (20 + len(opts)) // 4 << 4, flags,
                                 512, 0, 0) + opts + payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident, 0x4000, 64, 6, 0, SRC, DST))
    struct.pack_into("!H", ip, 10, csum(bytes(ip)))
    if partial:  # what the kernel hands over with NEEDS_CSUM: the pseudo-header sum, not complemented
        struct.pack_into("!H", tcp, 16, ~csum(pseudo(SRC, DST, 6, len(tcp))) & 0xFFFF)
    else:
        struct.pack_into("!H", tcp, 16, csum(pseudo(SRC, DST, 6, len(tcp)) + bytes(tcp)))
    return ip + tcp


def valid(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    tcp = pkt[ihl:]
    return csum(pkt[:ihl]) == 0 and csum(pseudo(pkt[12:16], pkt[16:20], 6, len(tcp)) + tcp) == 0


def segments(tso: bytearray, mss: int) -> list[bytes]:
    out, ov = bytearray(4096), None
    ov = memoryview(out)
    sv = memoryview(tso)
    res, i = [], 0
    while k := tun.segment_tcp(tso, sv, len(tso), mss, out, ov, i):
        res.append(bytes(out[:k]))
        i += 1
    return res


@pytest.mark.parametrize("size", [1, 1399, 1400, 1401, 5000, 64000 - 52])
def test_segment_tcp_cuts_like_the_kernel(size: int) -> None:
    payload = os.urandom(size)
    tso = tcp_packet(payload, seq=0xFFFFF000, flags=0x18 | 0x01, partial=True)  # ACK PSH FIN, seq wraps
    segs = segments(tso, 1400)
    assert len(segs) == -(-size // 1400)
    assert b"".join(s[52:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert valid(s), i
        assert struct.unpack_from("!H", s, 2)[0] == len(s)
        assert struct.unpack_from("!H", s, 4)[0] == 0x1234 + i
        assert struct.unpack_from("!I", s, 24)[0] == (0xFFFFF000 + 1400 * i) & 0xFFFFFFFF
        last = i == len(segs) - 1
        assert s[33] == (0x19 if last else 0x10)
        assert s[40:52] == tso[40:52]  # options copied


def test_complete_checksum_for_udp_and_odd_lengths() -> None:
    for n in (7, 8, 333):
        body = os.urandom(n)
        udp = bytearray(struct.pack("!HHHH", 1, 2, 8 + n, 0) + body)
        struct.pack_into("!H", udp, 6, ~csum(pseudo(SRC, DST, 17, len(udp))) & 0xFFFF)
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, SRC, DST))
        pkt = ip + udp
        tun.complete_checksum(pkt, memoryview(pkt), len(pkt), 20, 6)
        assert csum(pseudo(SRC, DST, 17, len(udp)) + bytes(pkt[20:])) == 0


class Sink:
    """A SOCK_SEQPACKET pair standing in for the TUN fd: one write, one message."""

    def __init__(self) -> None:
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.gro = tun.GroWriter(self.a.fileno())

    def feed(self, *pkts: bytes) -> None:
        buf = bytearray(70000)
        for p in pkts:
            buf[:len(p)] = p
            self.gro.add(buf, memoryview(buf), len(p))

    def messages(self) -> list[bytes]:
        self.gro.flush()
        self.b.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.b.recv(200000))
            except BlockingIOError:
                return out


def test_consecutive_segments_merge_into_one_gso_packet_and_cut_back_identically() -> None:
    payload = os.urandom(1400 * 10 + 77)
    original = segments(tcp_packet(payload, flags=0x18, partial=True), 1400)
    sink = Sink()
    sink.feed(*original)
    (msg,) = sink.messages()
    flags, gso, hdr_len, gso_size, cstart, coff = struct.unpack_from("<BBHHHH", msg)
    assert (flags, gso, hdr_len, gso_size, cstart, coff) == (1, 1, 52, 1400, 20, 16)
    merged = bytearray(msg[10:])
    assert struct.unpack_from("!H", merged, 2)[0] == len(merged) == 52 + len(payload)
    assert csum(bytes(merged[:20])) == 0
    assert merged[52:] == payload
    assert merged[33] == 0x18  # PSH of the last segment kept
    assert segments(merged, 1400) == original


def test_what_must_not_merge_is_written_apart() -> None:
    p1 = tcp_packet(os.urandom(1400), seq=1000)
    gap = tcp_packet(os.urandom(1400), seq=5000)  # not the next sequence number
    other_flow = tcp_packet(os.urandom(1400), seq=6400, sport=40001)
    new_ts = tcp_packet(os.urandom(1400), seq=7800, ts=8, sport=40001)  # options differ
    syn = tcp_packet(b"", seq=1, flags=0x02)
    udp = bytes(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, SRC, DST)) + bytes(8)
    sink = Sink()
    sink.feed(p1, gap, other_flow, new_ts, syn, udp)
    msgs = sink.messages()
    assert [m[10:] for m in msgs] == [p1, gap, other_flow, new_ts, syn, udp]
    assert all(m[:10] == bytes(10) for m in msgs)  # single packets keep their own checksums


def test_short_segment_ends_a_merge_and_psh_flushes() -> None:
    a = tcp_packet(os.urandom(1400), seq=0, ident=1)
    b = tcp_packet(os.urandom(700), seq=1400, ident=2)
    c = tcp_packet(os.urandom(1400), seq=2100, ident=3)  # follows a short one: new packet
    d = tcp_packet(os.urandom(1400), seq=3500, flags=0x18, ident=4)
    e = tcp_packet(os.urandom(1400), seq=4900, ident=5)  # after PSH: new packet
    sink = Sink()
    sink.feed(a, b, c, d, e)
    msgs = sink.messages()
    assert len(msgs) == 3
    assert segments(bytearray(msgs[0][10:]), 1400) == [a, b]
    assert segments(bytearray(msgs[1][10:]), 1400) == [c, d]
    assert msgs[2][10:] == e


def test_merge_stops_below_the_ipv4_length_limit() -> None:
    segs = [tcp_packet(os.urandom(1400), seq=1400 * i, ident=i) for i in range(60)]
    sink = Sink()
    sink.feed(*segs)
    msgs = sink.messages()
    assert len(msgs) == 2
    assert all(len(m) - 10 <= 65535 for m in msgs)
    assert [s for m in msgs for s in segments(bytearray(m[10:]), 1400)] == segs
