"""RFC 4303 tunnel-mode ESP for IPv4 inner packets, one object per SA direction.

Packet layout: SPI(4) | Seq(4) | IV(8 GCM, 16 CBC) | ciphertext(inner | pad 1,2,3.. | pad len | next
header) | ICV(16). 32-bit sequence numbers only (no ESN): when they run out the SA refuses to send and
must be rekeyed. The objects count their own work and drops in the SA's shared `SACounters`.

Hot path: `encapsulate_into` / `decapsulate_into` between preallocated `PacketBuffer`s;
`encapsulate` / `decapsulate` are bytes-in/bytes-out conveniences for tests and slow paths.
"""

from __future__ import annotations

import struct
import time

from vpnlab_agent.esp.ciphers import CbcHmacCipher, GcmCipher, PacketBuffer
from vpnlab_agent.esp.replay import DEFAULT_SIZE, ReplayWindow
from vpnlab_agent.sa import EspAlgorithm, SACounters

NEXT_HEADER_IPV4 = 4
NEXT_HEADER_NONE = 59  # RFC 4303 dummy packet: authenticate, then discard
ESP_HEADER_LEN = 8
SEQ_MAX = 0xFFFFFFFF

_HDR = struct.Struct(">II")
_HDR_GCM = struct.Struct(">IIQ")
_SEQ = struct.Struct(">I")
_monotonic = time.monotonic

# Padding bytes 1, 2, 3, ... (RFC 4303 2.4); trailer = padding || pad length || next header.
PADS = tuple(bytes(range(1, p + 1)) for p in range(256))
_TRAILERS = tuple(PADS[p] + bytes((p, NEXT_HEADER_IPV4)) for p in range(16))


class EspError(Exception):
    """A packet was refused; the message says why in one line."""


class MalformedPacket(EspError):
    pass


class AuthenticationFailed(EspError):
    pass


class ReplayedPacket(EspError):
    pass


class SequenceOverflow(EspError):
    """The 32-bit sequence number space is used up: the SA must be rekeyed before sending more."""


def make_cipher(algorithm: EspAlgorithm, enc_key: bytes, integ_key: bytes, encrypt: bool) -> GcmCipher | CbcHmacCipher:
    if algorithm.cipher == "aes-gcm-16" and algorithm.integ is None:
        if len(enc_key) != algorithm.key_bits // 8 + 4:
            raise ValueError(f"aes-gcm-16 {algorithm.key_bits}: key material must be {algorithm.key_bits // 8 + 4} bytes")
        return GcmCipher(enc_key, encrypt)
    if algorithm.cipher == "aes-cbc" and algorithm.integ == "hmac-sha256-128":
        if len(enc_key) != algorithm.key_bits // 8:
            raise ValueError(f"aes-cbc {algorithm.key_bits}: key must be {algorithm.key_bits // 8} bytes")
        return CbcHmacCipher(enc_key, integ_key, encrypt)
    raise ValueError(f"unsupported ESP transform {algorithm.cipher}/{algorithm.integ}")


def overhead(algorithm: EspAlgorithm) -> tuple[int, int]:
    """(fixed bytes added around the padded payload, payload alignment) for an ESP transform."""
    iv = 8 if algorithm.aead else 16
    return ESP_HEADER_LEN + iv + 16, 4 if algorithm.aead else 16


def max_inner_len(outer_budget: int, algorithm: EspAlgorithm) -> int:
    """Largest inner packet whose ESP packet fits outer_budget bytes (e.g. 1500 - IP 20 - UDP 8)."""
    fixed, align = overhead(algorithm)
    room = outer_budget - fixed  # for inner + padding + 2-byte trailer
    return room - room % align - 2


class EspOutbound:
    """Sending side of one SA: assigns sequence numbers, pads, encrypts, authenticates."""

    __slots__ = ("spi", "seq", "cipher", "counters", "_gcm", "_block")

    def __init__(self, spi: int, algorithm: EspAlgorithm, enc_key: bytes, integ_key: bytes,
                 counters: SACounters | None = None) -> None:
        if not 256 <= spi <= SEQ_MAX:
            raise ValueError(f"SPI {spi:#x} is reserved or out of range")
        self.spi = spi
        self.seq = 0  # last sequence number sent
        self.cipher = make_cipher(algorithm, enc_key, integ_key, True)
        self.counters = counters if counters is not None else SACounters()
        self._gcm = algorithm.aead
        self._block = self.cipher.block

    def encapsulate_into(self, src: PacketBuffer, n: int, dst: PacketBuffer, off: int = 0) -> int:
        """Turn the inner packet src[0:n] into an ESP packet at dst[off:]; returns its length.

        src needs 17 spare bytes after n for the trailer.
        """
        seq = self.seq + 1
        if seq > SEQ_MAX:
            raise SequenceOverflow(f"SPI {self.spi:#010x}: sequence numbers exhausted, rekey needed")
        self.seq = seq
        p = -(n + 2) % self._block
        src.data[n:n + p + 2] = _TRAILERS[p]
        if self._gcm:
            # RFC 4106: the IV only has to be unique per key, so the sequence number serves.
            hdr = _HDR_GCM.pack(self.spi, seq, seq)
            dst.data[off:off + 16] = hdr
            total = 16 + self.cipher.seal(hdr[8:], hdr[:8], src, n + p + 2, dst, off + 16)
        else:
            hdr = _HDR.pack(self.spi, seq)
            iv = self.cipher.new_iv()
            dst.data[off:off + 8] = hdr
            dst.data[off + 8:off + 24] = iv
            total = 24 + self.cipher.seal(iv, hdr, src, n + p + 2, dst, off + 24)
        c = self.counters
        c.packets_out += 1
        c.bytes_out += n
        c.last_used = _monotonic()
        return total

    def encapsulate(self, inner: bytes) -> bytes:
        src, dst = PacketBuffer(len(inner) + 32), PacketBuffer(len(inner) + 80)
        src.data[:len(inner)] = inner
        return bytes(dst.view[:self.encapsulate_into(src, len(inner), dst)])


class EspInbound:
    """Receiving side of one SA: replay window, ICV check, decryption, trailer checks."""

    __slots__ = ("spi", "cipher", "counters", "window", "_gcm", "_ivlen", "_min")

    def __init__(self, spi: int, algorithm: EspAlgorithm, enc_key: bytes, integ_key: bytes,
                 counters: SACounters | None = None, window: int = DEFAULT_SIZE) -> None:
        self.spi = spi
        self.cipher = make_cipher(algorithm, enc_key, integ_key, False)
        self.counters = counters if counters is not None else SACounters()
        self.window = ReplayWindow(window)
        self._gcm = algorithm.aead
        self._ivlen = self.cipher.iv_len
        # header + IV + smallest padded payload (4 bytes GCM, one 16-byte block CBC) + ICV
        self._min = ESP_HEADER_LEN + self._ivlen + self.cipher.block + 16

    def decapsulate_into(self, src: PacketBuffer, n: int, dst: PacketBuffer) -> int:
        """Check and decrypt the ESP packet src[0:n]; the inner packet lands in dst[0:return value].

        Returns 0 for an authentic dummy packet (next header 59). Raises an EspError subclass
        (and counts it) for anything refused.
        """
        if n < self._min:
            raise MalformedPacket(f"SPI {self.spi:#010x}: ESP packet of {n} bytes is too short")
        seq = _SEQ.unpack_from(src.data, 4)[0]
        window = self.window
        if not window.check(seq):
            self.counters.replay_dropped += 1
            raise ReplayedPacket(f"SPI {self.spi:#010x}: sequence {seq} replayed or behind the window")
        ivend = ESP_HEADER_LEN + self._ivlen
        data = src.data
        if self._gcm:
            ok = self.cipher.open(bytes(data[8:16]), bytes(data[0:8]), src, ivend, n - ivend, dst)
        else:
            ok = self.cipher.open(bytes(data[8:24]), b"", src, ivend, n - ivend, dst)
        if not ok:
            self.counters.auth_failed += 1
            raise AuthenticationFailed(f"SPI {self.spi:#010x}: ICV check failed for sequence {seq}")
        window.update(seq)  # only now: the packet is authentic
        clen = n - ivend - 16
        out = dst.data
        padlen = out[clen - 2]
        if padlen + 2 > clen or dst.view[clen - 2 - padlen:clen - 2] != PADS[padlen]:
            raise MalformedPacket(f"SPI {self.spi:#010x}: bad ESP padding (pad length {padlen})")
        nh = out[clen - 1]
        inner = clen - 2 - padlen
        if nh == NEXT_HEADER_NONE:
            return 0
        if nh != NEXT_HEADER_IPV4:
            raise MalformedPacket(f"SPI {self.spi:#010x}: next header {nh} is not IPv4")
        c = self.counters
        c.packets_in += 1
        c.bytes_in += inner
        c.last_used = _monotonic()
        return inner

    def decapsulate(self, packet: bytes) -> bytes:
        src, dst = PacketBuffer(len(packet) + 16), PacketBuffer(len(packet) + 16)
        src.data[:len(packet)] = packet
        return bytes(dst.view[:self.decapsulate_into(src, len(packet), dst)])
