"""Route requests packed for rtnetlink: the bytes the kernel reads, and the acks it answers with."""

from __future__ import annotations

import socket
import struct

import pytest

from vpnlab_agent import netlink_routes as nr


def _attrs(body: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off < len(body):
        length, kind = struct.unpack_from("=HH", body, off)
        out[kind] = body[off + 4: off + length]
        off += (length + 3) & ~3
    return out


def test_an_unreachable_guard_is_packed_as_pyroute2_sends_it() -> None:
    msg = nr.pack("add", nr.RouteRequest.of("10.1.0.0/24", type="unreachable", metric=4090), seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), nr.RTM_NEWROUTE, 7)
    assert flags == nr.NLM_F_REQUEST | nr.NLM_F_ACK | nr.NLM_F_CREATE | nr.NLM_F_EXCL
    family, dst_len, _, _, table, proto, scope, rtype, _ = struct.unpack_from("=BBBBBBBBI", msg, 16)
    assert (family, dst_len, table, proto, scope, rtype) == (socket.AF_INET, 24, 254, nr.RTPROT_STATIC, 0, 7)
    attrs = _attrs(msg[28:])
    assert attrs[nr.RTA_DST] == socket.inet_aton("10.1.0.0")
    assert struct.unpack("=I", attrs[nr.RTA_PRIORITY]) == (4090,)
    assert struct.unpack("=I", attrs[nr.RTA_TABLE]) == (254,)
    assert nr.RTA_OIF not in attrs and nr.RTA_GATEWAY not in attrs


def test_a_replace_carries_device_source_gateway_and_a_large_table() -> None:
    msg = nr.pack("replace", nr.RouteRequest.of("10.6.0.1/32", oif=3, gateway="198.51.100.1",
                                                prefsrc="10.9.0.1", table=1000), seq=1)
    assert struct.unpack_from("=H", msg, 6)[0] == nr.NLM_F_REQUEST | nr.NLM_F_ACK | nr.NLM_F_CREATE | nr.NLM_F_REPLACE
    assert msg[16 + 4] == nr.RT_TABLE_UNSPEC  # > 255: only in RTA_TABLE
    attrs = _attrs(msg[28:])
    assert struct.unpack("=I", attrs[nr.RTA_TABLE]) == (1000,)
    assert struct.unpack("=I", attrs[nr.RTA_OIF]) == (3,)
    assert attrs[nr.RTA_GATEWAY] == socket.inet_aton("198.51.100.1")
    assert attrs[nr.RTA_PREFSRC] == socket.inet_aton("10.9.0.1")
    assert nr.RTA_PRIORITY not in attrs  # metric 0: left out, as pyroute2 does


def test_a_delete_matches_any_protocol_and_scope() -> None:
    msg = nr.pack("del", nr.RouteRequest.of("10.1.0.0/24", type="unreachable", metric=4090), seq=2)
    assert struct.unpack_from("=HH", msg, 4) == (nr.RTM_DELROUTE, nr.NLM_F_REQUEST | nr.NLM_F_ACK)
    assert (msg[16 + 5], msg[16 + 6], msg[16 + 7]) == (nr.RTPROT_UNSPEC, nr.RT_SCOPE_NOWHERE, 7)


def test_ipv6_and_the_default_route() -> None:
    msg = nr.pack("add", nr.RouteRequest.of("2001:db8::/32", oif=2), seq=3)
    assert msg[16] == socket.AF_INET6
    assert _attrs(msg[28:])[nr.RTA_DST] == socket.inet_pton(socket.AF_INET6, "2001:db8::")
    default = nr.pack("add", nr.RouteRequest.of("0.0.0.0/0", gateway="198.51.100.1"), seq=4)
    assert nr.RTA_DST not in _attrs(default[28:])


def test_acks_are_read_per_sequence_number() -> None:
    def ack(seq: int, err: int, echo: bytes = b"") -> bytes:
        body = struct.pack("=i", -err) + echo
        return struct.pack("=IHHII", 16 + len(body), nr.NLMSG_ERROR, 0, seq, 0) + body + b"\0" * (-len(body) % 4)

    data = ack(5, 0) + ack(6, 17, b"\1" * 18) + ack(7, 101)
    assert nr.parse_acks(data) == {5: 0, 6: 17, 7: 101}
    assert nr.describe(17) == "(17, 'File exists')"


@pytest.mark.parametrize("kind", ["blackhole", "prohibit"])
def test_other_route_types(kind: str) -> None:
    msg = nr.pack("add", nr.RouteRequest.of("10.0.0.0/8", type=kind), seq=1)
    assert msg[16 + 7] == nr.RTN_TYPES[kind]
