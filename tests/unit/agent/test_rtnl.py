"""rtnl.py without a kernel: attributes and messages as the kernel frames them, and its errors."""

from __future__ import annotations

import socket
import struct

from vpnlab_agent import rtnl


def _msg(kind: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body + b"\0" * (-len(body) % 4)


def test_attributes_are_aligned_and_read_back() -> None:
    data = rtnl.attr(rtnl.IFLA_IFNAME, b"wan0\0") + rtnl.attr(rtnl.IFLA_MTU, struct.pack("=I", 1500))
    assert len(data) == 12 + 8  # 4 + 5 bytes padded to 12
    assert rtnl.attrs(data, 0) == {rtnl.IFLA_IFNAME: b"wan0\0", rtnl.IFLA_MTU: struct.pack("=I", 1500)}
    nested = struct.pack("=HH", 8, 0x8000 | rtnl.RTA_TABLE) + struct.pack("=I", 7)
    assert rtnl.attrs(nested, 0) == {rtnl.RTA_TABLE: struct.pack("=I", 7)}  # flag bits dropped


def test_several_messages_in_one_datagram() -> None:
    data = _msg(rtnl.RTM_NEWLINK, 4, b"\1" * 6) + _msg(rtnl.NLMSG_DONE, 4, b"\0" * 4)
    got = list(rtnl.messages(data))
    assert [(k, s, len(m)) for k, s, m in got] == [(rtnl.RTM_NEWLINK, 4, 22), (rtnl.NLMSG_DONE, 4, 20)]


def test_a_route_message_is_read_like_the_kernel_writes_it() -> None:
    body = rtnl.RTMSG.pack(socket.AF_INET, 24, 0, 0, 254, 4, 0, 1, 0)
    body += rtnl.attr(rtnl.RTA_TABLE, struct.pack("=I", 1000)) + rtnl.attr(rtnl.RTA_DST, socket.inet_aton("10.1.0.0"))
    body += rtnl.attr(rtnl.RTA_GATEWAY, socket.inet_aton("198.51.100.1")) + rtnl.attr(rtnl.RTA_OIF, struct.pack("=I", 3))
    r = rtnl.Rtnl._route(None, _msg(rtnl.RTM_NEWROUTE, 1, body))  # type: ignore[arg-type]
    assert (r.dst, r.dst_len, r.table, r.type, r.gateway, r.oif, r.metric, r.prefsrc) == (
        "10.1.0.0", 24, 1000, 1, "198.51.100.1", 3, 0, None)


def test_errors_read_like_pyroute2s() -> None:
    exc = rtnl.error(17)
    assert isinstance(exc, OSError) and exc.code == 17 and str(exc) == "(17, 'File exists')"
