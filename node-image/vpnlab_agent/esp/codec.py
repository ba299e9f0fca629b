"""RFC 4303 tunnel-mode ESP, one object per SA direction.

Packet layout: SPI(4) | Seq(4) | IV(8 GCM, 16 CBC) | ciphertext(inner | trailer) | ICV(16). The
trailer (padding, pad length, next header, and any extra bytes a feature adds) is the SA's
`Trailer` object's business (esp/trailer.py); the plain RFC 4303 one is the default. Next header
is 4 for an IPv4 inner packet and 41 for IPv6, checked against the inner packet on receipt.
32-bit sequence numbers only (no ESN): when they run out the SA refuses to send and must be
rekeyed. The objects count their own work and drops in the SA's shared `SACounters`.

Sans-I/O: no clock and no randomness of its own. `clock()` (monotonic seconds, for
`SACounters.last_used`) and `rng(n)` (n unpredictable bytes, for the AES-CBC IVs) come in from the
engine, which passes time.monotonic and os.urandom.

Hot path: `encapsulate_into` / `decapsulate_into` between preallocated `PacketBuffer`s;
`encapsulate` / `decapsulate` are bytes-in/bytes-out conveniences for tests and slow paths.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vpnlab_agent.esp.ciphers import CBC_IV_LEN, CbcHmacCipher, GcmCipher, PacketBuffer
from vpnlab_agent.esp.replay import DEFAULT_SIZE, ReplayWindow
from vpnlab_agent.esp.trailer import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
    RFC4303,
    Trailer,
    TrailerError,
)
from vpnlab_agent.sa import EspAlgorithm, SACounters

ESP_HEADER_LEN = 8
SEQ_MAX = 0xFFFFFFFF

_HDR = struct.Struct(">II")
_HDR_GCM = struct.Struct(">IIQ")
_SEQ = struct.Struct(">I")
# next header by the inner packet's IP version (first nibble); IPv4 unless it says 6
_NEXT_HEADER = tuple(NEXT_HEADER_IPV6 if v == 6 else NEXT_HEADER_IPV4 for v in range(16))
# inner IP version each accepted next header must carry
_VERSION = {NEXT_HEADER_IPV4: 4, NEXT_HEADER_IPV6: 6}

Clock = Callable[[], float]
Rng = Callable[[int], bytes]


def _no_clock() -> float:
    return 0.0  # without a clock, last_used stays 0: "never"


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


def max_inner_len(outer_budget: int, algorithm: EspAlgorithm, trailer: Trailer = RFC4303) -> int:
    """Largest inner packet whose ESP packet fits outer_budget bytes (e.g. 1500 - IP 20 - UDP 8)."""
    fixed, align = overhead(algorithm)
    room = outer_budget - fixed  # for inner + extra trailer bytes + padding + 2-byte trailer
    return room - room % align - 2 - trailer.extra


class EspOutbound:
    """Sending side of one SA: assigns sequence numbers, adds the trailer, encrypts, authenticates."""

    __slots__ = ("spi", "seq", "cipher", "counters", "extra", "_gcm", "_block", "_write", "_clock", "_rng")

    def __init__(self, spi: int, algorithm: EspAlgorithm, enc_key: bytes, integ_key: bytes,
                 counters: SACounters | None = None, *, trailer: Trailer = RFC4303, clock: Clock | None = None,
                 rng: Rng | None = None) -> None:
        if not 256 <= spi <= SEQ_MAX:
            raise ValueError(f"SPI {spi:#x} is reserved or out of range")
        self.cipher = make_cipher(algorithm, enc_key, integ_key, True)
        if not algorithm.aead and rng is None:
            raise ValueError(f"{algorithm.cipher} needs an rng for its IVs (RFC 3602: unpredictable)")
        self.spi = spi
        self.seq = 0  # last sequence number sent
        self.counters = counters if counters is not None else SACounters()
        self._gcm = algorithm.aead
        self._block = self.cipher.block
        self.extra = trailer.extra  # trailer bytes beyond RFC 4303's (buffer room, MTU)
        self._write = trailer.write  # bound once: the hot path calls it per packet
        self._clock = clock or _no_clock
        self._rng = rng

    def encapsulate_into(self, src: PacketBuffer, n: int, dst: PacketBuffer, off: int = 0, tag: int = 0) -> int:
        """Turn the inner packet src[0:n] into an ESP packet at dst[off:]; returns its length.

        src needs 17 spare bytes after n for the trailer, plus the trailer's `extra`. tag goes to
        the SA's trailer (0 on a plain SA).
        """
        seq = self.seq + 1
        if seq > SEQ_MAX:
            raise SequenceOverflow(f"SPI {self.spi:#010x}: sequence numbers exhausted, rekey needed")
        self.seq = seq
        data = src.data
        end = self._write(data, n, self._block, _NEXT_HEADER[data[0] >> 4] if n else NEXT_HEADER_IPV4, tag)
        if self._gcm:
            # RFC 4106: the IV only has to be unique per key, so the sequence number serves.
            hdr = _HDR_GCM.pack(self.spi, seq, seq)
            dst.data[off:off + 16] = hdr
            total = 16 + self.cipher.seal(hdr[8:], hdr[:8], src, end, dst, off + 16)
        else:
            hdr = _HDR.pack(self.spi, seq)
            iv = self._rng(CBC_IV_LEN)  # type: ignore[misc]
            dst.data[off:off + 8] = hdr
            dst.data[off + 8:off + 24] = iv
            total = 24 + self.cipher.seal(iv, hdr, src, end, dst, off + 24)
        c = self.counters
        c.packets_out += 1
        c.bytes_out += n
        c.last_used = self._clock()
        return total

    def encapsulate(self, inner: bytes, tag: int = 0) -> bytes:
        src, dst = PacketBuffer(len(inner) + 300), PacketBuffer(len(inner) + 400)
        src.data[:len(inner)] = inner
        return bytes(dst.view[:self.encapsulate_into(src, len(inner), dst, 0, tag)])


class EspInbound:
    """Receiving side of one SA: replay window, ICV check, decryption, trailer checks.

    After each accepted packet, `tag` holds what the SA's trailer read from it (0 on a plain SA).
    """

    __slots__ = ("spi", "cipher", "counters", "window", "tag", "_gcm", "_ivlen", "_min", "_read", "_clock")

    def __init__(self, spi: int, algorithm: EspAlgorithm, enc_key: bytes, integ_key: bytes,
                 counters: SACounters | None = None, window: int = DEFAULT_SIZE, *, trailer: Trailer = RFC4303,
                 clock: Clock | None = None) -> None:
        self.spi = spi
        self.cipher = make_cipher(algorithm, enc_key, integ_key, False)
        self.counters = counters if counters is not None else SACounters()
        self.window = ReplayWindow(window)
        self.tag = 0
        self._gcm = algorithm.aead
        self._ivlen = self.cipher.iv_len
        # header + IV + smallest padded payload (4 bytes GCM, one 16-byte block CBC) + ICV
        self._min = ESP_HEADER_LEN + self._ivlen + self.cipher.block + 16
        self._read = trailer.read
        self._clock = clock or _no_clock

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
        now = self.counters.last_in = self._clock()  # the peer is alive, whatever the packet holds
        try:
            inner, nh, self.tag = self._read(dst.view, n - ivend - 16)
        except TrailerError as e:
            raise MalformedPacket(f"SPI {self.spi:#010x}: {e}") from None
        if nh == NEXT_HEADER_NONE:
            return 0
        version = _VERSION.get(nh)
        if version is None or not inner or dst.data[0] >> 4 != version:
            raise MalformedPacket(f"SPI {self.spi:#010x}: next header {nh} does not fit the inner packet "
                                  "(4: IPv4, 41: IPv6)")
        c = self.counters
        c.packets_in += 1
        c.bytes_in += inner
        c.last_used = now
        return inner

    def decapsulate(self, packet: bytes) -> bytes:
        src, dst = PacketBuffer(len(packet) + 16), PacketBuffer(len(packet) + 16)
        src.data[:len(packet)] = packet
        return bytes(dst.view[:self.decapsulate_into(src, len(packet), dst)])
