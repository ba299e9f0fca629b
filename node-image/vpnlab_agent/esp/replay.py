"""Anti-replay sliding window (RFC 4303 section 3.4.3) over 32-bit sequence numbers, as a bitmask int.

Bit i of `mask` set means sequence number `top - i` was received. `check()` is the cheap pre-test
made before the ICV is verified; `update()` runs only once the packet is authentic, so forged
packets can never move the window.
"""

from __future__ import annotations

DEFAULT_SIZE = 1024  # wide: a userspace engine with two threads may reorder a little under load


class ReplayWindow:
    __slots__ = ("size", "top", "mask", "_full")

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if size < 64:
            raise ValueError(f"replay window must be at least 64, got {size}")
        self.size = size
        self.top = 0  # highest authenticated sequence number; 0 = nothing received yet
        self.mask = 0
        self._full = (1 << size) - 1

    def check(self, seq: int) -> bool:
        """True if seq is new and inside (or ahead of) the window. seq 0 is never valid."""
        if seq == 0:
            return False
        top = self.top
        if seq > top:
            return True
        diff = top - seq
        if diff >= self.size:
            return False
        return not (self.mask >> diff) & 1

    def update(self, seq: int) -> None:
        """Record an authenticated seq (already passed check())."""
        top = self.top
        if seq > top:
            shift = seq - top
            self.mask = ((self.mask << shift) | 1) & self._full if shift < self.size else 1
            self.top = seq
        else:
            self.mask |= 1 << (top - seq)
