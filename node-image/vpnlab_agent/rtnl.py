"""The little rtnetlink the router agent needs, packed with struct: find and set links, add and
remove addresses, list links, addresses and routes, ask the kernel for the route to an address.

Why not pyroute2 (which the routing contexts and the XFRM engine still use): importing its rtnetlink
part costs every router agent ~3.3 MiB of resident memory and ~30 ms of CPU at start, for the
dozen request kinds here; 200 agents starting on 2 cores feel both. Routes in batches are in
netlink_routes.py, on the same socket class.

Errors are `RtnlError` (an OSError with the kernel's errno); str() reads like pyroute2's
NetlinkError, "(17, 'File exists')", so the one-line messages built on them stay as they were.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
IFLA_IFNAME, IFLA_MTU, IFLA_TXQLEN = 3, 4, 13
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTA = struct.Struct("=HH")
U32 = struct.Struct("=I")
ERR = struct.Struct("=i")
RECV_SIZE = 1 << 16


class RtnlError(OSError):
    """The kernel refused a request (errno in .errno and .code) or the socket failed."""

    @property
    def code(self) -> int:
        return self.errno or 0

    def __str__(self) -> str:
        return f"({self.errno}, {self.strerror!r})"


def error(code: int) -> RtnlError:
    return RtnlError(code, os.strerror(code))


def attr(kind: int, payload: bytes) -> bytes:
    length = RTA.size + len(payload)
    return RTA.pack(length, kind) + payload + b"\0" * (-length % 4)


def attrs(data: bytes, off: int) -> dict[int, bytes]:
    """The attributes from `off` to the end of one message (the first of each kind)."""
    out: dict[int, bytes] = {}
    while off + RTA.size <= len(data):
        length, kind = RTA.unpack_from(data, off)
        if length < RTA.size:
            break
        out.setdefault(kind & 0x3FFF, data[off + RTA.size: off + length])  # without NLA_F_NESTED/BYTEORDER
        off += (length + 3) & ~3
    return out


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, whole message) for each message in one datagram."""
    off = 0
    while off + NLMSGHDR.size <= len(data):
        length, msg_type, _flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size:
            return
        yield msg_type, seq, data[off:off + length]
        off += (length + 3) & ~3


def _address(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw)


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    up: bool
    mtu: int


@dataclass(frozen=True)
class Address:
    index: int
    family: int  # AF_INET or AF_INET6
    address: str
    prefixlen: int


@dataclass(frozen=True)
class RouteEntry:
    family: int
    dst: str | None  # None: the default route
    dst_len: int
    table: int
    type: int  # RTN_*
    gateway: str | None
    oif: int
    metric: int
    prefsrc: str | None


class Rtnl:
    """One rtnetlink socket in this network namespace. Not thread-safe; use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # ---- requests -------------------------------------------------------------------------

    def next_seq(self, count: int = 1) -> int:
        """The first of `count` fresh sequence numbers."""
        first = self._seq + 1
        self._seq += count
        return first

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise RtnlError(exc.errno or 5, exc.strerror or str(exc)) from exc

    def recv(self) -> bytes:
        try:
            return self._sock.recv(RECV_SIZE)
        except OSError as exc:
            raise RtnlError(exc.errno or 5, exc.strerror or str(exc)) from exc

    def ask(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; the messages answered before its ack (a dump: before NLMSG_DONE).
        Raises RtnlError when the kernel refuses it."""
        seq = self.next_seq()
        self.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        out: list[bytes] = []
        while True:
            for kind, got_seq, msg in messages(self.recv()):
                if got_seq != seq:
                    continue  # a late answer to an earlier request
                if kind == NLMSG_ERROR:
                    code = -ERR.unpack_from(msg, NLMSGHDR.size)[0]
                    if code:
                        raise error(code)
                    return out
                if kind == NLMSG_DONE and dump:
                    return out
                out.append(msg)
                if not dump and not flags & NLM_F_ACK:
                    return out

    # ---- links ----------------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        """The ifindex of the interface named `name` here, or None."""
        try:
            (msg,) = self.ask(RTM_GETLINK, 0, IFINFOMSG.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0"))
        except RtnlError as exc:
            if exc.code in (19, 22):  # ENODEV; EINVAL from kernels that look up by index only
                return None
            raise
        return int(IFINFOMSG.unpack_from(msg, NLMSGHDR.size)[2])

    def set_link(self, index: int, *, up: bool | None = None, mtu: int | None = None,
                 txqlen: int | None = None) -> None:
        flags = IFF_UP if up else 0
        change = IFF_UP if up is not None else 0
        body = IFINFOMSG.pack(0, 0, index, flags, change)
        if mtu is not None:
            body += attr(IFLA_MTU, U32.pack(mtu))
        if txqlen is not None:
            body += attr(IFLA_TXQLEN, U32.pack(txqlen))
        self.ask(RTM_NEWLINK, NLM_F_ACK, body)

    def delete_link(self, index: int) -> None:
        self.ask(RTM_DELLINK, NLM_F_ACK, IFINFOMSG.pack(0, 0, index, 0, 0))

    def links(self) -> list[Link]:
        out = []
        for msg in self.ask(RTM_GETLINK, NLM_F_DUMP, IFINFOMSG.pack(0, 0, 0, 0, 0)):
            _family, _type, index, flags, _change = IFINFOMSG.unpack_from(msg, NLMSGHDR.size)
            a = attrs(msg, NLMSGHDR.size + IFINFOMSG.size)
            name = a.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            mtu = U32.unpack(a[IFLA_MTU])[0] if len(a.get(IFLA_MTU, b"")) == 4 else 0
            out.append(Link(index, name, bool(flags & IFF_UP), mtu))
        return out

    # ---- addresses ------------------------------------------------------------------------

    def _address_message(self, index: int, address: str, prefixlen: int, family: int) -> bytes:
        raw = socket.inet_pton(family, address)
        body = IFADDRMSG.pack(family, prefixlen, 0, 0, index)
        if family == socket.AF_INET:
            body += attr(IFA_LOCAL, raw)
        return body + attr(IFA_ADDRESS, raw)

    def add_address(self, index: int, address: str, prefixlen: int, family: int = socket.AF_INET) -> None:
        """As `ip addr add ADDRESS/PREFIXLEN dev INDEX` (no broadcast address); EEXIST if present."""
        self.ask(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, self._address_message(index, address, prefixlen, family))

    def delete_address(self, index: int, address: str, prefixlen: int, family: int = socket.AF_INET) -> None:
        self.ask(RTM_DELADDR, NLM_F_ACK, self._address_message(index, address, prefixlen, family))

    def addresses(self, family: int = 0) -> list[Address]:
        out = []
        for msg in self.ask(RTM_GETADDR, NLM_F_DUMP, IFADDRMSG.pack(family, 0, 0, 0, 0)):
            fam, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(msg, NLMSGHDR.size)
            a = attrs(msg, NLMSGHDR.size + IFADDRMSG.size)
            raw = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
            if raw and fam in (socket.AF_INET, socket.AF_INET6):
                out.append(Address(index, fam, _address(fam, raw), prefixlen))
        return out

    # ---- routes ---------------------------------------------------------------------------

    def _route(self, msg: bytes) -> RouteEntry:
        family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = RTMSG.unpack_from(msg, NLMSGHDR.size)
        a = attrs(msg, NLMSGHDR.size + RTMSG.size)

        def ip(kind: int) -> str | None:
            return _address(family, a[kind]) if kind in a else None

        def u32(kind: int) -> int:
            return int(U32.unpack(a[kind])[0]) if len(a.get(kind, b"")) == 4 else 0

        return RouteEntry(family, ip(RTA_DST), dst_len, u32(RTA_TABLE) or table, rtype, ip(RTA_GATEWAY),
                          u32(RTA_OIF), u32(RTA_PRIORITY), ip(RTA_PREFSRC))

    def routes(self, family: int = socket.AF_INET) -> list[RouteEntry]:
        """Every route of every table for this family."""
        return [self._route(m) for m in self.ask(RTM_GETROUTE, NLM_F_DUMP, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))
                if NLMSGHDR.unpack_from(m)[1] == RTM_NEWROUTE]

    def route_to(self, address: str) -> RouteEntry:
        """The route the kernel would take to `address` (`ip route get`)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        bits = 128 if family == socket.AF_INET6 else 32
        body = RTMSG.pack(family, bits, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, socket.inet_pton(family, address))
        found = self.ask(RTM_GETROUTE, 0, body)
        if not found:
            raise error(101)  # ENETUNREACH
        return self._route(found[0])
