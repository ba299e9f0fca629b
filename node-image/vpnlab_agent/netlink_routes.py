"""Routes added, replaced and deleted in batches over one rtnetlink socket, packed with struct.

Why not pyroute2 here: it encodes each message in Python and waits for each answer, about 1 ms of
CPU a route. A branch of a 200-branch lab has a leak guard and a tunnel route for each of the 200
remote LANs; 200 such branches starting at once on 2 cores spent tens of seconds of CPU on that
alone. Here all requests go in a few sendmsg calls and every one is acked on its own (NLM_F_ACK), so
each route still gets its own error code, in order.

What goes into a message is what pyroute2's `IPRoute.route()` sends for the same arguments (so the
kernel holds the same route, and either can delete it): protocol static, scope universe, the table
in the header and as RTA_TABLE. Deletes leave protocol and scope out (the kernel then matches any).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RTPROT_UNSPEC, RTPROT_STATIC = 0, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RT_TABLE_UNSPEC, RT_TABLE_MAIN = 0, 254
RTN_TYPES = {"unicast": 1, "blackhole": 6, "unreachable": 7, "prohibit": 8}
FLAGS = {
    "add": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    "replace": NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    "del": NLM_F_REQUEST | NLM_F_ACK,
}
# Requests per sendmsg: their acks (36 bytes, or the request echoed with an error) stay far below
# the socket's receive buffer, so none is lost while we are still sending.
CHUNK = 128

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERR = struct.Struct("=i")


class NetlinkRouteError(OSError):
    """The netlink socket itself failed (not one route: those are error codes in the results)."""


@dataclass(frozen=True)
class RouteRequest:
    """One route as `IPRoute.route()` would be called for it."""

    dst: str  # network address, e.g. "10.1.0.0"
    dst_len: int
    family: int = 4
    type: str = "unicast"
    metric: int = 0
    oif: int = 0
    gateway: str | None = None
    prefsrc: str | None = None
    table: int = RT_TABLE_MAIN

    @classmethod
    def of(cls, cidr: str, **fields: object) -> RouteRequest:
        net = ipaddress.ip_network(cidr, strict=False)
        return cls(str(net.network_address), net.prefixlen, net.version, **fields)  # type: ignore[arg-type]


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTA.size + len(payload)
    return _RTA.pack(length, kind) + payload + b"\0" * (-length % 4)


def pack(command: str, r: RouteRequest, seq: int) -> bytes:
    """The RTM_NEWROUTE/RTM_DELROUTE message for one request."""
    family = socket.AF_INET if r.family == 4 else socket.AF_INET6
    deleting = command == "del"
    header = _RTMSG.pack(
        family, r.dst_len, 0, 0, r.table if r.table < 256 else RT_TABLE_UNSPEC,
        RTPROT_UNSPEC if deleting else RTPROT_STATIC, RT_SCOPE_NOWHERE if deleting else RT_SCOPE_UNIVERSE,
        RTN_TYPES[r.type], 0,
    )
    attrs = [_attr(RTA_TABLE, _U32.pack(r.table))]
    if r.dst_len:
        attrs.append(_attr(RTA_DST, socket.inet_pton(family, r.dst)))
    if r.oif:
        attrs.append(_attr(RTA_OIF, _U32.pack(r.oif)))
    if r.gateway:
        attrs.append(_attr(RTA_GATEWAY, socket.inet_pton(family, r.gateway)))
    if r.prefsrc:
        attrs.append(_attr(RTA_PREFSRC, socket.inet_pton(family, r.prefsrc)))
    if r.metric:
        attrs.append(_attr(RTA_PRIORITY, _U32.pack(r.metric)))
    body = header + b"".join(attrs)
    msg_type = RTM_DELROUTE if deleting else RTM_NEWROUTE
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, FLAGS[command], seq, 0) + body


def parse_acks(data: bytes) -> dict[int, int]:
    """seq -> errno (0: done) for each NLMSG_ERROR in one datagram."""
    out: dict[int, int] = {}
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            break
        if msg_type == NLMSG_ERROR and length >= _NLMSGHDR.size + _ERR.size:
            out[seq] = -_ERR.unpack_from(data, off + _NLMSGHDR.size)[0]
        off += (length + 3) & ~3
    return out


class RouteBatch:
    """One rtnetlink socket in this network namespace; `run()` sends requests and returns an errno
    (0 for done) per request, in order. Use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> RouteBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def run(self, requests: Sequence[tuple[str, RouteRequest]]) -> list[int]:
        results: list[int] = []
        for start in range(0, len(requests), CHUNK):
            chunk = requests[start:start + CHUNK]
            first = self._seq + 1
            self._seq += len(chunk)
            wanted = set(range(first, first + len(chunk)))
            try:
                self._sock.sendall(b"".join(pack(cmd, r, first + i) for i, (cmd, r) in enumerate(chunk)))
                got: dict[int, int] = {}
                while wanted - got.keys():
                    got.update(parse_acks(self._sock.recv(1 << 16)))
            except OSError as exc:
                raise NetlinkRouteError(exc.errno or errno.EIO, f"rtnetlink: {exc.strerror or exc}") from exc
            results += [got[seq] for seq in range(first, first + len(chunk))]
        return results


def describe(code: int) -> str:
    """An errno as pyroute2's NetlinkError would say it, e.g. "(17, 'File exists')"."""
    return f"({code}, {os.strerror(code)!r})"
