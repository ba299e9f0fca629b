"""The HSVPN trailer: a routing-context tag inside the encrypted ESP trailer (docs/hsvpn.md).

    inner packet | tag (2, network order) | marker 0x48 | padding 1, 2, ..., p | p (1) | next header (1)
                 '-------- encrypted and authenticated like the rest of the ESP payload --------'

Padding, pad length and next header are RFC 4303's, unchanged: the padding is still 1, 2, 3, ...,
the pad length counts only the padding, and the whole is padded to the cipher's block. The three
extra bytes sit between the inner packet and the padding, where an RFC 4303 receiver would take
them for the end of the inner packet (which the inner IP header's own length excludes).

Which SAs carry it is negotiated per IKE SA (contexts/extension.py): a plain SA keeps the plain
RFC 4303 trailer, a tagged SA has this one on every packet. On a tagged SA, the receiver checks the
marker and that the inner IPv4 header's total length ends exactly where the tag begins, so a
packet without a tag (or a corrupt one) is refused, never guessed at. Which context a tag means
is the SA's negotiated map (`tags`); the engine drops and counts a tag outside it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from vpnlab_agent.esp.trailer import PADS, Trailer, TrailerError, register_trailer

MARKER = 0x48  # 'H'
EXTRA = 3  # tag (2) + marker (1)
MAX_TAG = 0xFFFF


class HsvpnTrailer(Trailer):
    kind: ClassVar[str] = "hsvpn"
    extra: ClassVar[int] = EXTRA

    def __init__(self, tags: dict[int, str]) -> None:
        for tag, name in tags.items():
            if not 1 <= tag <= MAX_TAG:
                raise ValueError(f"HSVPN tag {tag} for {name!r} is outside 1-{MAX_TAG}")
        if len(set(tags.values())) != len(tags):
            raise ValueError("HSVPN tag map names a context twice")
        self.tags = dict(sorted(tags.items()))  # tag -> context name
        self.by_context = {name: tag for tag, name in self.tags.items()}

    def write(self, data: bytearray, n: int, block: int, next_header: int, tag: int = 0) -> int:
        data[n] = tag >> 8
        data[n + 1] = tag & 0xFF
        data[n + 2] = MARKER
        m = n + EXTRA
        p = -(m + 2) % block
        data[m:m + p] = PADS[p]
        data[m + p] = p
        data[m + p + 1] = next_header
        return m + p + 2

    def read(self, data: bytearray | memoryview, end: int) -> tuple[int, int, int]:
        p = data[end - 2]
        m = end - 2 - p
        if m < EXTRA or data[m:end - 2] != PADS[p]:
            raise TrailerError(f"bad ESP padding (pad length {p})")
        if data[m - 1] != MARKER:
            raise TrailerError("no HSVPN tag in the trailer of a tagged SA")
        inner = m - EXTRA
        nh = data[end - 1]
        if nh == 4 and inner and (inner < 20 or (data[2] << 8 | data[3]) != inner):
            raise TrailerError("HSVPN tag does not follow the inner IPv4 packet")
        return inner, nh, data[inner] << 8 | data[inner + 1]

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "tags": {str(t): n for t, n in self.tags.items()}}

    def __hash__(self) -> int:  # describe() holds a dict: the base class's hash cannot take it
        return hash((self.kind, tuple(self.tags.items())))


def _from_dict(d: dict[str, Any]) -> HsvpnTrailer:
    return HsvpnTrailer({int(t): n for t, n in d["tags"].items()})


register_trailer(HsvpnTrailer.kind, _from_dict)
