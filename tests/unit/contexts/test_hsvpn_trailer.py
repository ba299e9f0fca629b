"""The HSVPN trailer: byte layout, RFC 4303 padding kept valid, untagged or corrupt trailers refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnlab_agent.contexts.trailer import MARKER, HsvpnTrailer
from vpnlab_agent.esp.trailer import RFC4303, TrailerError, trailer_from_dict

T = HsvpnTrailer({1: "corp", 2: "voice", 7: "guest"})


def ipv4(n: int) -> bytearray:
    pkt = bytearray(n)
    pkt[0] = 0x45
    struct.pack_into("!H", pkt, 2, n)
    return pkt


def test_layout_of_a_tagged_trailer() -> None:
    data = ipv4(21) + bytearray(64)
    end = T.write(data, 21, 4, 4, tag=7)
    # 21 inner + tag 00 07 + marker + padding 1, 2 + pad length 2 + next header 4 = 28, a multiple of 4
    assert end == 28
    assert bytes(data[21:28]) == bytes([0, 7, MARKER, 1, 2, 2, 4])
    assert T.read(data, end) == (21, 4, 7)


@given(n=st.integers(20, 1500), block=st.sampled_from([4, 16]), tag=st.integers(1, 0xFFFF))
def test_round_trip_and_rfc4303_padding(n: int, block: int, tag: int) -> None:
    data = ipv4(n) + bytearray(64)
    end = T.write(data, n, block, 4, tag)
    assert end % block == 0 and end - n - 5 < block  # no more padding than needed
    p = data[end - 2]
    assert bytes(data[end - 2 - p:end - 2]) == bytes(range(1, p + 1))
    assert T.read(data, end) == (n, 4, tag)


def test_plain_packet_on_a_tagged_sa_is_refused() -> None:
    data = ipv4(40) + bytearray(64)
    end = RFC4303.write(data, 40, 4, 4)
    with pytest.raises(TrailerError):
        T.read(data, end)


def test_a_tag_that_does_not_follow_the_inner_packet_is_refused() -> None:
    data = ipv4(40) + bytearray(64)
    end = T.write(data, 40, 4, 4, 1)
    struct.pack_into("!H", data, 2, 36)  # the inner header says it ends earlier
    with pytest.raises(TrailerError, match="does not follow"):
        T.read(data, end)


def test_tag_map_crosses_json_and_compares_by_value() -> None:
    again = trailer_from_dict(T.describe())
    assert again == T and hash(again) == hash(T)
    assert again.by_context == {"corp": 1, "voice": 2, "guest": 7}
    assert T.describe() == {"kind": "hsvpn", "tags": {"1": "corp", "2": "voice", "7": "guest"}}


@pytest.mark.parametrize("tags", [{0: "corp"}, {70000: "corp"}, {1: "corp", 2: "corp"}])
def test_bad_tag_maps(tags: dict[int, str]) -> None:
    with pytest.raises(ValueError):
        HsvpnTrailer(tags)
