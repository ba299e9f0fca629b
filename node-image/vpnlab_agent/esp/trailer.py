"""How one SA builds and reads its ESP trailer (RFC 4303 sections 2.4-2.6), chosen per SA.

The encrypted payload of an ESP packet ends in a trailer after the inner packet:

    inner packet | [extra bytes] | padding | pad length (1) | next header (1)

padded to the cipher's block. A `Trailer` object (referenced by `ChildSA.trailer`) decides what
goes there, so a feature can carry extra encrypted bytes per packet (HSVPN's context tag) on its
own SAs while a plain SA stays byte-for-byte RFC 4303. The codec calls `write` for every packet it
sends and `read` for every authentic packet it receives; a per-packet `tag` passes through both
(0 on a plain SA), so an engine can tell which context a packet belongs to.

`Rfc4303Trailer` (`RFC4303`, the default) is the plain one: no extra bytes, the default padding
1, 2, 3, ... (section 2.4), checked on receipt.

This module imports nothing from the agent: `sa.py` refers to it, and the codec uses it.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59  # RFC 4303 dummy packet: authenticate, then discard

# Padding bytes 1, 2, 3, ... (RFC 4303 2.4), by pad length.
PADS = tuple(bytes(range(1, p + 1)) for p in range(256))
# padding || pad length || next header, by next header and pad length (pad length < block <= 16)
_PLAIN = {nh: tuple(PADS[p] + bytes((p, nh)) for p in range(16))
          for nh in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE)}


class TrailerError(ValueError):
    """A decrypted payload's trailer is malformed (or names a tag this SA does not carry); one line."""


class Trailer(abc.ABC):
    """The trailer of one SA. Instances are shared by both directions and by every packet thread,
    so they keep no per-packet state. Subclasses are immutable values (they sit in a frozen ChildSA)."""

    kind: ClassVar[str]  # names the format in status output and in `describe()`
    # The most bytes `write` adds beyond the 2-byte RFC 4303 minimum plus padding to the block:
    # the engines take it off the inner MTU.
    extra: ClassVar[int] = 0

    @abc.abstractmethod
    def write(self, data: bytearray, n: int, block: int, next_header: int, tag: int = 0) -> int:
        """Put the trailer after the inner packet data[0:n] and return the padded length, a
        multiple of block (4 or 16). data has room for 2 + extra + block - 1 bytes after n."""

    @abc.abstractmethod
    def read(self, data: bytearray | memoryview, end: int) -> tuple[int, int, int]:
        """(inner length, next header, tag) of the authentic, decrypted payload data[0:end].

        Raises TrailerError for a malformed trailer."""

    def describe(self) -> dict[str, Any]:
        """What `ctl status` shows, and what `trailer_from_dict` rebuilds the object from."""
        return {"kind": self.kind}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.describe() == self.describe()

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.describe().items()))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


class Rfc4303Trailer(Trailer):
    """Plain RFC 4303: padding 1, 2, 3, ..., pad length, next header; no extra bytes, no tags."""

    kind: ClassVar[str] = "rfc4303"

    def write(self, data: bytearray, n: int, block: int, next_header: int, tag: int = 0) -> int:
        p = -(n + 2) % block
        data[n:n + p + 2] = _PLAIN[next_header][p]
        return n + p + 2

    def read(self, data: bytearray | memoryview, end: int) -> tuple[int, int, int]:
        padlen = data[end - 2]
        if padlen + 2 > end or data[end - 2 - padlen:end - 2] != PADS[padlen]:
            raise TrailerError(f"bad ESP padding (pad length {padlen})")
        return end - 2 - padlen, data[end - 1], 0


RFC4303 = Rfc4303Trailer()

# kind -> factory(describe() output): how a trailer crosses a process boundary (tests' JSON engine)
_KINDS: dict[str, Any] = {Rfc4303Trailer.kind: lambda d: RFC4303}


def register_trailer(kind: str, factory: Any) -> None:
    """Let `trailer_from_dict` rebuild trailers of this kind (a feature registers its own)."""
    _KINDS[kind] = factory


def trailer_from_dict(d: dict[str, Any]) -> Trailer:
    try:
        factory = _KINDS[d["kind"]]
    except KeyError:
        raise ValueError(f"unknown ESP trailer kind {d.get('kind')!r} (known: {', '.join(sorted(_KINDS))})") from None
    return factory(d)  # type: ignore[no-any-return]
