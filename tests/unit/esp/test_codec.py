"""ESP codec: round trips, known answers from independent cryptography calls, every refusal counted."""

from __future__ import annotations

import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vpnlab_agent.esp.codec import (
    AuthenticationFailed,
    EspInbound,
    EspOutbound,
    MalformedPacket,
    ReplayedPacket,
    SequenceOverflow,
    max_inner_len,
)
from vpnlab_agent.esp.trailer import RFC4303, Rfc4303Trailer, Trailer, TrailerError
from vpnlab_agent.sa import EspAlgorithm

GCM128 = EspAlgorithm("aes-gcm-16", 128)
GCM256 = EspAlgorithm("aes-gcm-16", 256)
CBC128 = EspAlgorithm("aes-cbc", 128, "hmac-sha256-128")
CBC256 = EspAlgorithm("aes-cbc", 256, "hmac-sha256-128")
SPI = 0xC0FFEE01


def keys(alg: EspAlgorithm) -> tuple[bytes, bytes]:
    if alg.aead:
        return os.urandom(alg.key_bits // 8 + 4), b""
    return os.urandom(alg.key_bits // 8), os.urandom(32)


def pair(alg: EspAlgorithm) -> tuple[EspOutbound, EspInbound]:
    ek, ik = keys(alg)
    return EspOutbound(SPI, alg, ek, ik, rng=os.urandom), EspInbound(SPI, alg, ek, ik, window=64)


def ipv4(payload: bytes, src: bytes = bytes([10, 1, 0, 10]), dst: bytes = bytes([10, 2, 0, 10])) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0, src, dst)
    return hdr + payload


ALL = [GCM128, GCM256, CBC128, CBC256]
IDS = ["gcm128", "gcm256", "cbc128", "cbc256"]


@pytest.mark.parametrize("alg", ALL, ids=IDS)
@pytest.mark.parametrize("size", [0, 1, 2, 3, 13, 14, 15, 16, 17, 100, 1380, 1438])
def test_round_trip_every_padding(alg: EspAlgorithm, size: int) -> None:
    out, inb = pair(alg)
    inner = ipv4(os.urandom(size))
    pkt = out.encapsulate(inner)
    fixed = 8 + (8 if alg.aead else 16) + 16
    assert (len(pkt) - fixed) % (4 if alg.aead else 16) == 0
    assert inb.decapsulate(pkt) == inner
    assert inb.counters.packets_in == 1 and inb.counters.bytes_in == len(inner)
    assert out.counters.packets_out == 1 and out.counters.bytes_out == len(inner)


@pytest.mark.parametrize("alg", ALL, ids=IDS)
def test_sequence_numbers_count_up_from_one(alg: EspAlgorithm) -> None:
    out, inb = pair(alg)
    for expected in (1, 2, 3):
        pkt = out.encapsulate(ipv4(b"x"))
        assert struct.unpack_from(">II", pkt) == (SPI, expected)
        inb.decapsulate(pkt)


@pytest.mark.parametrize("alg", [GCM128, GCM256], ids=["gcm128", "gcm256"])
def test_gcm_known_answer(alg: EspAlgorithm) -> None:
    ek = bytes(range(alg.key_bits // 8 + 4))
    out = EspOutbound(SPI, alg, ek, b"")
    out.seq = 41
    inner = ipv4(b"known answer " * 7)  # 111 + 20 bytes
    pkt = out.encapsulate(inner)
    # independent reference: RFC 4303 trailer, RFC 4106 nonce = salt || IV, AAD = SPI || seq
    pad = -(len(inner) + 2) % 4
    plain = inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
    iv = struct.pack(">Q", 42)
    aad = struct.pack(">II", SPI, 42)
    expected = aad + iv + AESGCM(ek[:-4]).encrypt(ek[-4:] + iv, plain, aad)
    assert pkt == expected
    inb = EspInbound(SPI, alg, ek, b"")
    assert inb.decapsulate(expected) == inner


@pytest.mark.parametrize("alg", [CBC128, CBC256], ids=["cbc128", "cbc256"])
def test_cbc_hmac_known_answer(alg: EspAlgorithm) -> None:
    ek, ik = bytes(range(alg.key_bits // 8)), bytes(range(100, 132))
    inner = ipv4(b"known answer " * 5)
    out = EspOutbound(SPI, alg, ek, ik, rng=os.urandom)
    pkt = out.encapsulate(inner)
    iv = pkt[8:24]  # random: take it from the packet, recompute everything else
    pad = -(len(inner) + 2) % 16
    plain = inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
    enc = Cipher(algorithms.AES(ek), modes.CBC(iv)).encryptor()
    body = struct.pack(">II", SPI, 1) + iv + enc.update(plain) + enc.finalize()
    expected = body + hmac.new(ik, body, "sha256").digest()[:16]
    assert pkt == expected
    # and a packet built only by the reference decodes
    iv2 = os.urandom(16)
    enc2 = Cipher(algorithms.AES(ek), modes.CBC(iv2)).encryptor()
    body2 = struct.pack(">II", SPI, 7) + iv2 + enc2.update(plain) + enc2.finalize()
    ref = body2 + hmac.new(ik, body2, "sha256").digest()[:16]
    assert EspInbound(SPI, alg, ek, ik).decapsulate(ref) == inner


def test_cbc_ivs_are_fresh() -> None:
    out, _ = pair(CBC128)
    ivs = {out.encapsulate(ipv4(b"same"))[8:24] for _ in range(50)}
    assert len(ivs) == 50


@pytest.mark.parametrize("alg", ALL, ids=IDS)
def test_tampered_byte_anywhere_is_dropped_and_counted(alg: EspAlgorithm) -> None:
    out, inb = pair(alg)
    pkt = out.encapsulate(ipv4(os.urandom(60)))
    # every byte after the SPI (a changed SPI is just another, unknown SA for the engine)
    for i in range(4, len(pkt)):
        bad = bytearray(pkt)
        bad[i] ^= 0x01 << (i % 8)
        with pytest.raises(AuthenticationFailed if i >= 8 else (AuthenticationFailed, ReplayedPacket)):
            inb.decapsulate(bytes(bad))
    assert inb.counters.auth_failed >= len(pkt) - 8
    assert inb.counters.packets_in == 0
    assert inb.window.top == 0  # forgeries never move the window
    assert inb.decapsulate(pkt)  # the genuine one still passes afterwards


@pytest.mark.parametrize("alg", ALL, ids=IDS)
def test_truncated_packets_are_refused(alg: EspAlgorithm) -> None:
    out, inb = pair(alg)
    pkt = out.encapsulate(ipv4(b"abc"))
    for cut in range(1, len(pkt)):
        with pytest.raises((MalformedPacket, AuthenticationFailed)):
            inb.decapsulate(pkt[:cut])
    assert inb.counters.packets_in == 0


@pytest.mark.parametrize("alg", ALL, ids=IDS)
def test_replayed_packet_is_dropped_and_counted(alg: EspAlgorithm) -> None:
    out, inb = pair(alg)
    pkt = out.encapsulate(ipv4(b"once"))
    inb.decapsulate(pkt)
    with pytest.raises(ReplayedPacket):
        inb.decapsulate(pkt)
    assert inb.counters.replay_dropped == 1
    assert inb.counters.packets_in == 1


def test_out_of_order_inside_window_accepted_old_outside_refused() -> None:
    out, inb = pair(GCM128)
    pkts = [out.encapsulate(ipv4(bytes([i]))) for i in range(200)]
    inb.decapsulate(pkts[199])  # seq 200
    inb.decapsulate(pkts[150])  # seq 151: 49 behind, inside a 64 window
    with pytest.raises(ReplayedPacket):
        inb.decapsulate(pkts[100])  # seq 101: 99 behind, outside
    with pytest.raises(ReplayedPacket):
        inb.decapsulate(pkts[150])
    assert inb.counters.replay_dropped == 2
    assert inb.counters.packets_in == 2


def _forge(alg: EspAlgorithm, ek: bytes, ik: bytes, plain: bytes, seq: int = 1) -> bytes:
    """A correctly authenticated packet around an arbitrary (possibly malformed) plaintext."""
    hdr = struct.pack(">II", SPI, seq)
    if alg.aead:
        iv = struct.pack(">Q", seq)
        return hdr + iv + AESGCM(ek[:-4]).encrypt(ek[-4:] + iv, plain, hdr)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(ek), modes.CBC(iv)).encryptor()
    body = hdr + iv + enc.update(plain) + enc.finalize()
    return body + hmac.new(ik, body, "sha256").digest()[:16]


@pytest.mark.parametrize("alg", [GCM128, CBC128], ids=["gcm", "cbc"])
def test_padding_is_checked(alg: EspAlgorithm) -> None:
    ek, ik = keys(alg)
    inner = ipv4(b"12")  # 22 bytes: GCM pad 0, CBC pad 8
    block = 4 if alg.aead else 16
    good_pad = -(len(inner) + 2) % block

    def padded(pad: bytes, padlen: int) -> bytes:
        return inner + pad + bytes([padlen, 4])

    inb = EspInbound(SPI, alg, ek, ik)
    ok = _forge(alg, ek, ik, padded(bytes(range(1, good_pad + 1)), good_pad), seq=1)
    assert inb.decapsulate(ok) == inner
    k = good_pad or block  # a non-empty padding that keeps the alignment
    bad_bytes = _forge(alg, ek, ik, padded(bytes(k), k), seq=2)  # zeros instead of 1, 2, 3..
    with pytest.raises(MalformedPacket, match="padding"):
        inb.decapsulate(bad_bytes)
    too_long = _forge(alg, ek, ik, bytes(block - 2) + bytes([250, 4]), seq=3)
    with pytest.raises(MalformedPacket, match="padding"):
        inb.decapsulate(too_long)


@pytest.mark.parametrize("alg", [GCM128, CBC128], ids=["gcm", "cbc"])
def test_next_header_must_fit_the_inner_packet_and_dummy_is_discarded(alg: EspAlgorithm) -> None:
    ek, ik = keys(alg)
    block = 4 if alg.aead else 16
    inb = EspInbound(SPI, alg, ek, ik)
    body = bytes(block * 2 - 2)
    v4, v6 = b"\x45" + body[1:], b"\x60" + body[1:]
    with pytest.raises(MalformedPacket, match="next header 41"):
        inb.decapsulate(_forge(alg, ek, ik, v4 + bytes([0, 41]), seq=1))  # IPv4 inside, says IPv6
    with pytest.raises(MalformedPacket, match="next header 4 "):
        inb.decapsulate(_forge(alg, ek, ik, v6 + bytes([0, 4]), seq=2))
    with pytest.raises(MalformedPacket, match="next header 17"):
        inb.decapsulate(_forge(alg, ek, ik, v4 + bytes([0, 17]), seq=3))
    assert inb.decapsulate(_forge(alg, ek, ik, body + bytes([0, 59]), seq=4)) == b""
    assert inb.counters.packets_in == 0
    assert inb.decapsulate(_forge(alg, ek, ik, v6 + bytes([0, 41]), seq=5)) == v6  # the engine checks the rest


@pytest.mark.parametrize("alg", ALL, ids=IDS)
def test_next_header_follows_the_inner_ip_version(alg: EspAlgorithm) -> None:
    ek, ik = keys(alg)
    out = EspOutbound(SPI, alg, ek, ik, rng=os.urandom)
    inb = EspInbound(SPI, alg, ek, ik, trailer=_Peek())
    for first, nh in ((0x45, 4), (0x60, 41)):
        inner = bytes([first]) + os.urandom(50)
        assert inb.decapsulate(out.encapsulate(inner)) == inner
        assert inb.tag == nh  # _Peek reports the next header it read as the tag


class _Peek(Rfc4303Trailer):
    """Plain RFC 4303, but reports the next header it read as the packet's tag."""

    def read(self, data: bytearray | memoryview, end: int) -> tuple[int, int, int]:
        inner, nh, _ = super().read(data, end)
        return inner, nh, nh


class _Tagged(Trailer):
    """A test trailer with one extra encrypted byte before the padding: the packet's tag."""

    kind = "test-one-byte-tag"
    extra = 1

    def write(self, data: bytearray, n: int, block: int, next_header: int, tag: int = 0) -> int:
        data[n] = tag
        end = RFC4303.write(data, n + 1, block, next_header)
        return end

    def read(self, data: bytearray | memoryview, end: int) -> tuple[int, int, int]:
        inner, nh, _ = RFC4303.read(data, end)
        if inner < 1 or data[inner - 1] not in (7, 9):
            raise TrailerError(f"tag {data[inner - 1] if inner else None} not negotiated")
        return inner - 1, nh, data[inner - 1]


@pytest.mark.parametrize("alg", ALL, ids=IDS)
def test_sa_trailer_carries_extra_encrypted_bytes_and_a_tag(alg: EspAlgorithm) -> None:
    ek, ik = keys(alg)
    clock = iter(range(100, 200)).__next__
    out = EspOutbound(SPI, alg, ek, ik, trailer=_Tagged(), rng=os.urandom, clock=lambda: 5.0)
    inb = EspInbound(SPI, alg, ek, ik, trailer=_Tagged(), clock=lambda: float(clock()))
    plain_in = EspInbound(SPI, alg, ek, ik)
    inner = ipv4(b"tagged")
    for tag in (7, 9):
        pkt = out.encapsulate(inner, tag)
        assert inb.decapsulate(pkt) == inner and inb.tag == tag
        # a plain SA reads the tag as part of the inner packet: the encrypted payload really carries it
        assert plain_in.decapsulate(pkt) == inner + bytes([tag])
    with pytest.raises(MalformedPacket, match="tag 8 not negotiated"):
        inb.decapsulate(out.encapsulate(inner, 8))
    assert inb.counters.packets_in == 2 and inb.counters.last_used == 101.0
    assert out.counters.last_used == 5.0
    budget = 1500 - 28
    n = max_inner_len(budget, alg, _Tagged())
    assert n <= max_inner_len(budget, alg) and len(out.encapsulate(bytes([0x45]) + bytes(n - 1), 7)) <= budget


def test_cbc_ivs_come_from_the_injected_rng_and_no_clock_means_never_used() -> None:
    ek, ik = keys(CBC128)
    drawn: list[bytes] = []

    def rng(k: int) -> bytes:
        drawn.append(bytes([len(drawn)]) * k)
        return drawn[-1]

    out = EspOutbound(SPI, CBC128, ek, ik, rng=rng)
    pkts = [out.encapsulate(ipv4(b"x")) for _ in range(3)]
    assert [p[8:24] for p in pkts] == drawn == [bytes([i]) * 16 for i in range(3)]
    assert out.counters.last_used == 0.0


def test_sequence_overflow_refuses_to_send() -> None:
    out, inb = pair(GCM128)
    out.seq = 0xFFFFFFFE
    last = out.encapsulate(ipv4(b"last"))
    assert struct.unpack_from(">I", last, 4)[0] == 0xFFFFFFFF
    with pytest.raises(SequenceOverflow, match="rekey"):
        out.encapsulate(ipv4(b"one too many"))
    assert out.counters.packets_out == 1


def test_wrong_key_lengths_and_transforms_are_refused() -> None:
    with pytest.raises(ValueError, match="20 bytes"):
        EspOutbound(SPI, GCM128, bytes(16), b"")
    with pytest.raises(ValueError, match="HMAC"):
        EspOutbound(SPI, CBC128, bytes(16), bytes(20), rng=os.urandom)
    with pytest.raises(ValueError, match="needs an rng"):
        EspOutbound(SPI, CBC128, bytes(16), bytes(32))
    with pytest.raises(ValueError, match="unsupported"):
        EspOutbound(SPI, EspAlgorithm("chacha20", 256), bytes(36), b"")
    with pytest.raises(ValueError, match="reserved"):
        EspOutbound(5, GCM128, bytes(20), b"")


def test_max_inner_len_fits_the_underlay() -> None:
    budget = 1500 - 20 - 8  # outer IPv4 + UDP (RFC 3948)
    for alg in ALL:
        n = max_inner_len(budget, alg)
        out, _ = pair(alg)
        assert len(out.encapsulate(bytes(n))) <= budget
        assert len(out.encapsulate(bytes(n + 1))) > budget or (n + 1 + 2) % (4 if alg.aead else 16) != 1
    assert max_inner_len(budget, GCM128) == 1438
    assert max_inner_len(budget, CBC128) == 1422


@pytest.mark.parametrize("alg", [GCM128, CBC128], ids=["gcm", "cbc"])
def test_packets_laid_back_to_back_for_udp_gso(alg: EspAlgorithm) -> None:
    from vpnlab_agent.esp.ciphers import PacketBuffer

    out, inb = pair(alg)
    src, dst = PacketBuffer(4096), PacketBuffer(16384)
    inners = [ipv4(os.urandom(1000)) for _ in range(5)]
    pos, spans = 0, []
    for p in inners:
        src.data[:len(p)] = p
        m = out.encapsulate_into(src, len(p), dst, pos)
        spans.append((pos, m))
        pos += m
    assert len({m for _, m in spans}) == 1  # equal sizes: one UDP_SEGMENT size fits all
    for (off, m), p in zip(spans, inners):
        assert inb.decapsulate(bytes(dst.data[off:off + m])) == p


@pytest.mark.parametrize("alg", [GCM128, CBC128], ids=["gcm", "cbc"])
def test_last_in_is_when_an_authentic_packet_came_and_nothing_else_moves_it(alg: EspAlgorithm) -> None:
    # IKE counts it as the peer's liveness (RFC 7296 §2.4): forged, replayed and tampered packets must not
    ek, ik = keys(alg)
    clock = iter([5.0, 6.0, 7.0, 8.0, 9.0])
    out = EspOutbound(SPI, alg, ek, ik, rng=os.urandom)
    inb = EspInbound(SPI, alg, ek, ik, clock=lambda: next(clock))
    first = out.encapsulate(ipv4(b"x" * 20))
    assert inb.decapsulate(first) and inb.counters.last_in == 5.0
    with pytest.raises(ReplayedPacket):
        inb.decapsulate(first)
    bad = bytearray(out.encapsulate(ipv4(b"y" * 20)))
    bad[-1] ^= 1
    with pytest.raises(AuthenticationFailed):
        inb.decapsulate(bytes(bad))
    body = bytes((4 if alg.aead else 16) * 2 - 2)
    with pytest.raises(AuthenticationFailed):  # a fresh sequence number, but not the SA's keys
        inb.decapsulate(_forge(alg, *keys(alg), body + bytes([0, 59]), seq=7))
    assert inb.counters.last_in == 5.0
    inb.decapsulate(_forge(alg, ek, ik, body + bytes([0, 59]), seq=9))  # an authentic dummy packet counts
    assert inb.counters.last_in == 6.0 and inb.counters.packets_in == 1
