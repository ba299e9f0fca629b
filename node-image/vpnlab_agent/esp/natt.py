"""UDP encapsulation of ESP (RFC 3948): what a datagram on port 4500 is.

First four bytes zero: an IKE message behind the non-ESP marker. A single 0xFF byte: a NAT-keepalive.
Anything else of at least 8 bytes: ESP, starting with its (non-zero) SPI.
"""

from __future__ import annotations

NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"

ESP, IKE, KEEPALIVE_KIND, INVALID = 0, 1, 2, 3


def classify(data: bytes | bytearray | memoryview, n: int | None = None) -> int:
    n = len(data) if n is None else n
    if n == 1 and data[0] == 0xFF:
        return KEEPALIVE_KIND
    if n >= 4 and data[0] == 0 and data[1] == 0 and data[2] == 0 and data[3] == 0:
        return IKE
    if n >= 8:
        return ESP
    return INVALID
