"""XFRM netlink messages (linux/xfrm.h), packed with struct, and a small request/ack socket.

pyroute2 0.7 (the image has Debian's 0.7.2) speaks rtnetlink, but has no XFRM state or policy
messages, so the few we need are packed here. Layouts are those of x86-64 (and UML on it); sizes are
checked at import so a wrong layout fails loudly, not in the kernel.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass

NETLINK_XFRM = 6
AF_INET = socket.AF_INET
IPPROTO_ESP = 50

# message types
XFRM_MSG_NEWSA, XFRM_MSG_DELSA, XFRM_MSG_GETSA = 0x10, 0x11, 0x12
XFRM_MSG_NEWPOLICY, XFRM_MSG_DELPOLICY = 0x13, 0x14
XFRM_MSG_EXPIRE, XFRM_MSG_UPDPOLICY, XFRM_MSG_UPDSA = 0x18, 0x19, 0x1A
XFRMNLGRP_EXPIRE = 2

# attributes
XFRMA_ALG_CRYPT, XFRMA_ENCAP, XFRMA_TMPL = 2, 4, 5
XFRMA_LASTUSED, XFRMA_ALG_AEAD, XFRMA_ALG_AUTH_TRUNC, XFRMA_MARK = 15, 18, 20, 21
XFRMA_SET_MARK, XFRMA_SET_MARK_MASK = 29, 30  # u32 each: the mark a state puts on what it outputs (4.19)
XFRMA_IF_ID = 31  # u32: the xfrm interface (if_id) a state or policy belongs to (Linux 4.19)

XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_POLICY_FWD = 0, 1, 2
XFRM_POLICY_ALLOW = 0
XFRM_MODE_TUNNEL = 1
UDP_ENCAP_ESPINUDP = 2
XFRM_INF = (1 << 64) - 1

NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_CREATE, NLM_F_EXCL = 0x400, 0x200
NLMSG_ERROR, NLMSG_DONE = 0x2, 0x3

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
# struct xfrm_selector: daddr, saddr, dport, dport_mask, sport, sport_mask, family,
# prefixlen_d, prefixlen_s, proto, (pad), ifindex, user
_SELECTOR = struct.Struct("=16s16sHHHHHBBB3xiI")
_ID = struct.Struct("=16sIB3x")  # struct xfrm_id: daddr, spi (be), proto
_LFT_CFG = struct.Struct("=8Q")  # struct xfrm_lifetime_cfg
_LFT_CUR = struct.Struct("=4Q")  # struct xfrm_lifetime_cur: bytes, packets, add_time, use_time
_STATS = struct.Struct("=3I")  # struct xfrm_stats: replay_window, replay, integrity_failed
# struct xfrm_usersa_info: sel, id, saddr, lft, curlft, stats, seq, reqid, family, mode,
# replay_window, flags (+ padding to 8)
_USERSA_INFO = struct.Struct(f"=56s24s16s64s32s12sIIHBBB7x")
_USERSA_ID = struct.Struct("=16sIHB1x")  # struct xfrm_usersa_id: daddr, spi, family, proto
# struct xfrm_userpolicy_info: sel, lft, curlft, priority, index, dir, action, flags, share
_USERPOLICY_INFO = struct.Struct("=56s64s32sIIBBBB4x")
_USERPOLICY_ID = struct.Struct("=56sIB3x")  # struct xfrm_userpolicy_id: sel, index, dir
# struct xfrm_user_tmpl: id, family, saddr, reqid, mode, share, optional, aalgos, ealgos, calgos
_USER_TMPL = struct.Struct("=24sH2x16sIBBBxIII")
_ALGO = struct.Struct("=64sI")  # struct xfrm_algo: name, key_len (bits), key follows
_ALGO_X = struct.Struct("=64sII")  # xfrm_algo_aead / xfrm_algo_auth: + icv_len / trunc_len (bits)
_ENCAP = struct.Struct("=HHH2x16s")  # struct xfrm_encap_tmpl: type, sport (be), dport (be), oa
_MARK = struct.Struct("=II")  # struct xfrm_mark: value, mask

# (value, mask): the SA or policy applies only to packets whose fwmark & mask == value
Mark = tuple[int, int]

for _s, _size in ((_SELECTOR, 56), (_ID, 24), (_USERSA_INFO, 224), (_USERSA_ID, 24),
                  (_USERPOLICY_INFO, 168), (_USERPOLICY_ID, 64), (_USER_TMPL, 64), (_ENCAP, 24)):
    assert _s.size == _size, (_s.format, _s.size, _size)


class XfrmError(OSError):
    """The kernel refused an XFRM request; errno is the kernel's."""


def _addr(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed.ljust(16, b"\0")


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLATTR.size + len(payload)
    return _NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _mark_attr(mark: Mark | None) -> bytes:
    return _attr(XFRMA_MARK, _MARK.pack(*mark)) if mark else b""


def _if_id_attr(if_id: int) -> bytes:
    return _attr(XFRMA_IF_ID, struct.pack("=I", if_id)) if if_id else b""


def selector(src_cidr: str = "0.0.0.0/0", dst_cidr: str = "0.0.0.0/0") -> bytes:
    src = ipaddress.IPv4Network(src_cidr, strict=False)
    dst = ipaddress.IPv4Network(dst_cidr, strict=False)
    return _SELECTOR.pack(
        _addr(str(dst.network_address)), _addr(str(src.network_address)), 0, 0, 0, 0,
        AF_INET, dst.prefixlen, src.prefixlen, 0, 0, 0,
    )  # fmt: skip


def _lifetime_cfg(soft_bytes: int = 0, hard_bytes: int = 0) -> bytes:
    return _LFT_CFG.pack(
        soft_bytes or XFRM_INF, hard_bytes or XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0
    )


@dataclass(frozen=True)
class StateSpec:
    """One ESP state (one direction), tunnel mode."""

    src: str
    dst: str
    spi: int
    reqid: int
    # AEAD: aead=("rfc4106(gcm(aes))", key||salt, icv_bits); else crypt=(name, key), auth=(name, key, trunc_bits)
    aead: tuple[str, bytes, int] | None = None
    crypt: tuple[str, bytes] | None = None
    auth: tuple[str, bytes, int] | None = None
    encap: tuple[int, int] | None = None  # (sport, dport): ESP-in-UDP (RFC 3948)
    replay_window: int = 32
    soft_bytes: int = 0
    hard_bytes: int = 0
    mark: Mark | None = None
    if_id: int = 0
    # the mark (value, mask) this state puts on the packet it makes: the inner packet it decrypts
    # (inbound), the outer ESP packet (outbound); routed by that mark afterwards
    set_mark: Mark | None = None


def _set_mark_attrs(mark: Mark | None) -> bytes:
    if mark is None:
        return b""
    return _attr(XFRMA_SET_MARK, struct.pack("=I", mark[0])) + _attr(XFRMA_SET_MARK_MASK, struct.pack("=I", mark[1]))


def newsa_payload(s: StateSpec) -> bytes:
    info = _USERSA_INFO.pack(
        selector(), _ID.pack(_addr(s.dst), socket.htonl(s.spi), IPPROTO_ESP), _addr(s.src),
        _lifetime_cfg(s.soft_bytes, s.hard_bytes), bytes(_LFT_CUR.size), bytes(_STATS.size),
        0, s.reqid, AF_INET, XFRM_MODE_TUNNEL, s.replay_window, 0,
    )  # fmt: skip
    attrs = b""
    if s.aead is not None:
        name, key, icv = s.aead
        attrs += _attr(XFRMA_ALG_AEAD, _ALGO_X.pack(name.encode(), len(key) * 8, icv) + key)
    if s.crypt is not None:
        name, key = s.crypt
        attrs += _attr(XFRMA_ALG_CRYPT, _ALGO.pack(name.encode(), len(key) * 8) + key)
    if s.auth is not None:
        name, key, trunc = s.auth
        attrs += _attr(XFRMA_ALG_AUTH_TRUNC, _ALGO_X.pack(name.encode(), len(key) * 8, trunc) + key)
    if s.encap is not None:
        sport, dport = s.encap
        attrs += _attr(
            XFRMA_ENCAP, _ENCAP.pack(UDP_ENCAP_ESPINUDP, socket.htons(sport), socket.htons(dport), bytes(16))
        )
    return info + attrs + _mark_attr(s.mark) + _if_id_attr(s.if_id) + _set_mark_attrs(s.set_mark)


def sa_id_payload(dst: str, spi: int, mark: Mark | None = None) -> bytes:
    # a marked state is only found when the lookup carries the same mark
    return _USERSA_ID.pack(_addr(dst), socket.htonl(spi), AF_INET, IPPROTO_ESP) + _mark_attr(mark)


@dataclass(frozen=True)
class PolicySpec:
    src_cidr: str
    dst_cidr: str
    direction: int  # XFRM_POLICY_IN / OUT / FWD
    tmpl_src: str  # outer addresses of the SA that carries it
    tmpl_dst: str
    reqid: int
    priority: int = 2000
    mark: Mark | None = None
    if_id: int = 0

    @property
    def key(self) -> tuple[str, str, int, Mark | None, int]:
        """What the kernel tells policies apart by: a second policy with the same key replaces the first."""
        return (str(ipaddress.IPv4Network(self.src_cidr, strict=False)),
                str(ipaddress.IPv4Network(self.dst_cidr, strict=False)), self.direction, self.mark, self.if_id)


def policy_payload(p: PolicySpec) -> bytes:
    info = _USERPOLICY_INFO.pack(
        selector(p.src_cidr, p.dst_cidr), _lifetime_cfg(), bytes(_LFT_CUR.size),
        p.priority, 0, p.direction, XFRM_POLICY_ALLOW, 0, 0,
    )  # fmt: skip
    tmpl = _USER_TMPL.pack(
        _ID.pack(_addr(p.tmpl_dst), 0, IPPROTO_ESP), AF_INET, _addr(p.tmpl_src), p.reqid,
        XFRM_MODE_TUNNEL, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF,
    )  # fmt: skip
    return info + _attr(XFRMA_TMPL, tmpl) + _mark_attr(p.mark) + _if_id_attr(p.if_id)


def policy_id_payload(src_cidr: str, dst_cidr: str, direction: int, mark: Mark | None = None, if_id: int = 0) -> bytes:
    # the kernel finds a policy by selector, direction, mark and if_id
    return _USERPOLICY_ID.pack(selector(src_cidr, dst_cidr), 0, direction) + _mark_attr(mark) + _if_id_attr(if_id)


def socket_bypass_policy(direction: int) -> bytes:
    """Per-socket policy (IP_XFRM_POLICY) that lets IKE bypass any overlapping SPD entry."""
    # the kernel wants the selector family set (AF_INET) even for "any"
    return _USERPOLICY_INFO.pack(
        selector(), _lifetime_cfg(), bytes(_LFT_CUR.size), 0, 0, direction, XFRM_POLICY_ALLOW, 0, 0
    )


@dataclass(frozen=True)
class StateCounters:
    bytes: int
    packets: int
    use_time: int  # wall-clock seconds of last use (0: never)
    replay: int
    integrity_failed: int


def parse_usersa_info(payload: bytes) -> StateCounters:
    _sel, _id, _saddr, _lft, curlft, stats, *_ = _USERSA_INFO.unpack_from(payload)
    nbytes, packets, _add, use = _LFT_CUR.unpack(curlft)
    _window, replay, integ = _STATS.unpack(stats)
    return StateCounters(nbytes, packets, use, replay, integ)


def parse_expire(payload: bytes) -> tuple[str, int, bool]:
    """XFRM_MSG_EXPIRE (struct xfrm_user_expire: usersa_info, hard): (dst, spi, hard)."""
    _sel, xid, *_ = _USERSA_INFO.unpack_from(payload)
    daddr, spi_be, _proto = _ID.unpack(xid)
    hard = payload[_USERSA_INFO.size] != 0
    return str(ipaddress.IPv4Address(daddr[:4])), socket.ntohl(spi_be), hard


class XfrmSocket:
    """NETLINK_XFRM request/ack in the caller's network namespace. Thread-safe (one lock)."""

    def __init__(self, groups: int = 0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
        self._sock.bind((0, groups))
        self._seq = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def request(self, msg_type: int, payload: bytes, flags: int = 0) -> list[tuple[int, bytes]]:
        """Send one request; return the reply messages (type, payload). Raises XfrmError."""
        with self._lock:
            self._seq += 1
            seq = self._seq
            hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0)
            self._sock.send(hdr + payload)
            replies: list[tuple[int, bytes]] = []
            while True:
                data = self._sock.recv(65536)
                off = 0
                while off + _NLMSGHDR.size <= len(data):
                    length, mtype, _flags, rseq, _pid = _NLMSGHDR.unpack_from(data, off)
                    body = data[off + _NLMSGHDR.size : off + length]
                    off += (length + 3) & ~3
                    if rseq != seq:
                        continue  # a stale reply (earlier request that timed out) or a broadcast
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        if code:
                            raise XfrmError(code, f"{os.strerror(code)} ({_NAMES.get(msg_type, msg_type)})")
                        return replies  # the ack
                    if mtype == NLMSG_DONE:
                        return replies
                    replies.append((mtype, body))

    def receive(self) -> list[tuple[int, bytes]]:
        """Read broadcast messages (for a socket bound to groups)."""
        data = self._sock.recv(65536)
        out, off = [], 0
        while off + _NLMSGHDR.size <= len(data):
            length, mtype, *_ = _NLMSGHDR.unpack_from(data, off)
            out.append((mtype, data[off + _NLMSGHDR.size : off + length]))
            off += (length + 3) & ~3
        return out


def ignore_missing(exc: XfrmError) -> bool:
    return exc.errno in (errno.ENOENT, errno.ESRCH)


_NAMES = {
    XFRM_MSG_NEWSA: "new SA", XFRM_MSG_UPDSA: "update SA", XFRM_MSG_DELSA: "delete SA",
    XFRM_MSG_GETSA: "get SA", XFRM_MSG_NEWPOLICY: "new policy", XFRM_MSG_UPDPOLICY: "update policy",
    XFRM_MSG_DELPOLICY: "delete policy",
}  # fmt: skip
