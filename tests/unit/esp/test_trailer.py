"""Per-SA ESP trailers: the plain RFC 4303 one byte for byte, refusals, and the kind registry."""

from __future__ import annotations

import pytest

from vpnlab_agent.esp.trailer import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    RFC4303,
    Rfc4303Trailer,
    TrailerError,
    register_trailer,
    trailer_from_dict,
)


@pytest.mark.parametrize("block", [4, 16])
@pytest.mark.parametrize("n", range(0, 40))
@pytest.mark.parametrize("nh", [NEXT_HEADER_IPV4, NEXT_HEADER_IPV6])
def test_plain_trailer_is_rfc4303_padding_and_reads_back(block: int, n: int, nh: int) -> None:
    data = bytearray(b"\xaa" * n + bytes(64))
    end = RFC4303.write(data, n, block, nh)
    pad = -(n + 2) % block
    assert end == n + pad + 2 and end % block == 0
    # RFC 4303 2.4: the default padding is 1, 2, 3, ...; then pad length and next header
    assert bytes(data[n:end]) == bytes(range(1, pad + 1)) + bytes([pad, nh])
    assert bytes(data[:n]) == b"\xaa" * n
    assert RFC4303.read(memoryview(data), end) == (n, nh, 0)


@pytest.mark.parametrize("trailer", [
    bytes([1, 2, 4, 3, 4]),  # padding not 1, 2, 3
    bytes([0, 0, 2, 4]),  # zeros instead of 1, 2
    bytes([9, 4]),  # pad length longer than the payload
])  # fmt: skip
def test_plain_trailer_refuses_bad_padding(trailer: bytes) -> None:
    with pytest.raises(TrailerError, match="bad ESP padding"):
        RFC4303.read(bytearray(b"\x45" * 3 + trailer), 3 + len(trailer))


def test_trailers_compare_by_description_and_round_trip() -> None:
    assert Rfc4303Trailer() == RFC4303 and hash(Rfc4303Trailer()) == hash(RFC4303)
    assert RFC4303.describe() == {"kind": "rfc4303"}
    assert trailer_from_dict(RFC4303.describe()) is RFC4303
    with pytest.raises(ValueError, match="unknown ESP trailer kind 'nope'"):
        trailer_from_dict({"kind": "nope"})


def test_a_feature_registers_its_own_trailer_kind() -> None:
    class Tagged(Rfc4303Trailer):
        kind = "test-tagged"
        extra = 1

        def __init__(self, tag: int) -> None:
            self.tag = tag

        def describe(self) -> dict[str, object]:
            return {"kind": self.kind, "tag": self.tag}

    register_trailer("test-tagged", lambda d: Tagged(d["tag"]))
    assert trailer_from_dict({"kind": "test-tagged", "tag": 7}) == Tagged(7)
    assert Tagged(7) != Tagged(8) and Tagged(7) != RFC4303
