"""Load-status messages between the members of a gateway cluster, and the pool they build.

Sans-I/O: bytes and `now` (wall-clock seconds, the members' clocks are assumed roughly in step) in,
bytes and pool contents out. The service multicasts `encode_status()` on the shared segment every
interval and feeds what it hears to `MemberPool.receive()`.

Layout (network byte order; docs/loadbalancer.md):
  magic "VLBS" (4) | version (1) | flags (1: bit0 available, bit1 VRRP master) | interval ms (2)
  | timestamp ms since the epoch (8) | sequence (4) | address (4, IPv4: where clients are redirected)
  | active tunnels (4) | arrivals (4) | capacity (4) | weight (2) | name length (1) | name (ASCII, 1..63)
  | HMAC-SHA-256 over everything before it, truncated to 16 bytes.
The HMAC key is derived from the cluster key (`status_key()`), so the status messages of one cluster
never verify under another's key.

Replay protection: a message is accepted only when its timestamp is within `window_s` of `now` and
(timestamp, sequence) is strictly greater than the last one accepted from that member. A replay
inside the window fails the ordering, an older one the window; a restarted member sends later
timestamps, so it needs no state carried over a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field, replace

MAGIC = b"VLBS"
VERSION = 2  # 2: arrivals (v1 members cannot balance with v2 ones: all members run one agent)
MAC_LEN = 16
MAX_NAME = 63
_HEAD = struct.Struct("!4sBBHQI4sIIIHB")  # up to the name length
FLAG_AVAILABLE = 0x01
FLAG_MASTER = 0x02
SILENT_INTERVALS = 3  # a member silent this many of its own intervals leaves the pool
DEFAULT_WINDOW_S = 10.0


class StatusError(ValueError):
    """Why a status message was refused; the pool counts these."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # "malformed" | "forged" | "replayed" | "stale" | "foreign"


@dataclass(frozen=True)
class MemberStatus:
    name: str
    address: str  # the member's own IKE address: what a REDIRECT names
    active: int  # active tunnels (established IKE SAs with clients)
    capacity: int  # how many tunnels it takes (0: no limit stated)
    weight: int = 1  # relative share for the capacity metric
    available: bool = True  # False: alive but takes no new clients (draining, IKE not running)
    master: bool = False  # what its keepalived says
    interval_ms: int = 1000
    timestamp_ms: int = 0
    sequence: int = 0
    # New IKE_SA_INITs it took since it started (mod 2**32), at its own address or, on the master,
    # served on the virtual address: how many of the redirects the master counts as pending arrived,
    # exactly, whatever left meanwhile (cluster/selection.py).
    arrivals: int = 0


def status_key(cluster_key: bytes, cluster: str) -> bytes:
    """The HMAC key for one cluster's status messages (HKDF-Expand style, one block)."""
    info = b"vpnlab cluster status v1\x00" + cluster.encode()
    return hmac.new(hashlib.sha256(cluster_key).digest(), info + b"\x01", hashlib.sha256).digest()


def encode_status(st: MemberStatus, key: bytes) -> bytes:
    name = st.name.encode("ascii")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"member name {st.name!r}: 1..{MAX_NAME} ASCII characters")
    flags = (FLAG_AVAILABLE if st.available else 0) | (FLAG_MASTER if st.master else 0)
    body = _HEAD.pack(MAGIC, VERSION, flags, st.interval_ms, st.timestamp_ms, st.sequence,
                      ipaddress.IPv4Address(st.address).packed, st.active, st.arrivals & 0xFFFFFFFF,
                      st.capacity, st.weight, len(name)) + name
    return body + _mac(key, body)


def decode_status(data: bytes, key: bytes) -> MemberStatus:
    """Parse and authenticate one message; StatusError("malformed"|"forged") otherwise."""
    if len(data) < _HEAD.size + 1 + MAC_LEN or data[:4] != MAGIC:
        raise StatusError("malformed", "not a vpnlab status message")
    body, mac = data[:-MAC_LEN], data[-MAC_LEN:]
    # The MAC first: nothing an unauthenticated sender put in the fields is interpreted.
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise StatusError("forged", "bad HMAC (wrong cluster key, or altered)")
    (_, version, flags, interval_ms, ts, seq, addr, active, arrivals, capacity, weight, nlen) = _HEAD.unpack_from(body)
    if version != VERSION:
        raise StatusError("malformed", f"version {version} (speak {VERSION})")
    name = body[_HEAD.size:]
    if len(name) != nlen or not name:
        raise StatusError("malformed", "name length does not match")
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        raise StatusError("malformed", "name is not ASCII") from None
    if interval_ms == 0:
        raise StatusError("malformed", "interval 0")
    return MemberStatus(text, str(ipaddress.IPv4Address(addr)), active, capacity, weight,
                        bool(flags & FLAG_AVAILABLE), bool(flags & FLAG_MASTER), interval_ms, ts, seq, arrivals)


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()[:MAC_LEN]


@dataclass
class _Entry:
    status: MemberStatus
    heard_at: float  # our `now` when it arrived


@dataclass
class PoolCounters:
    accepted: int = 0
    malformed: int = 0
    forged: int = 0
    replayed: int = 0
    stale: int = 0
    foreign: int = 0  # authentic, but from a name that is not a configured member
    left: int = 0  # members that fell silent and left the pool

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class MemberPool:
    """The members a cluster node currently believes in, itself included (always fresh).

    `members`: the configured member names; status from anyone else is authentic but refused
    (a member of another cluster sharing the key would otherwise join).
    """

    own: str
    key: bytes
    members: frozenset[str]
    window_s: float = DEFAULT_WINDOW_S
    counters: PoolCounters = field(default_factory=PoolCounters)
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _last: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (timestamp, seq) accepted
    _own: MemberStatus | None = None

    def set_own(self, st: MemberStatus) -> None:
        self._own = st

    def receive(self, data: bytes, now: float) -> MemberStatus | None:
        """One datagram from the segment. Returns the accepted status, or None (and counts why)."""
        try:
            st = self._check(decode_status(data, self.key), now)
        except StatusError as e:
            setattr(self.counters, e.kind, getattr(self.counters, e.kind) + 1)
            return None
        self.counters.accepted += 1
        self._last[st.name] = (st.timestamp_ms, st.sequence)
        self._entries[st.name] = _Entry(st, now)
        return st

    def _check(self, st: MemberStatus, now: float) -> MemberStatus:
        if st.name == self.own:
            # our own multicast looped back, or someone replaying it at us
            raise StatusError("replayed", "carries our own name")
        if st.name not in self.members:
            raise StatusError("foreign", f"{st.name!r} is not a member of this cluster")
        if abs(st.timestamp_ms / 1000 - now) > self.window_s:
            raise StatusError("stale", "timestamp outside the window")
        last = self._last.get(st.name)
        if last is not None and (st.timestamp_ms, st.sequence) <= last:
            raise StatusError("replayed", "not newer than the last accepted")
        return st

    def expire(self, now: float) -> list[str]:
        """Drop members silent for SILENT_INTERVALS of their own interval; returns who left."""
        gone = [n for n, e in self._entries.items()
                if now - e.heard_at > SILENT_INTERVALS * e.status.interval_ms / 1000]
        for n in gone:
            del self._entries[n]
            self.counters.left += 1
        return gone

    def drop_masters(self) -> list[str]:
        """We just became VRRP master, so whoever last claimed it stopped advertising (dead, or
        preempted by us): out of the pool until its next message, instead of drawing clients for
        the 3 silent intervals a dead member takes to leave. Its replay state is kept."""
        gone = [n for n, e in self._entries.items() if e.status.master]
        for n in gone:
            del self._entries[n]
            self.counters.left += 1
        return gone

    def next_expiry(self) -> float | None:
        times = [e.heard_at + SILENT_INTERVALS * e.status.interval_ms / 1000 for e in self._entries.values()]
        return min(times) if times else None

    def alive(self, now: float) -> dict[str, MemberStatus]:
        """Members in the pool now (silent ones removed first), own status included."""
        self.expire(now)
        out = {n: e.status for n, e in self._entries.items()}
        if self._own is not None:
            out[self.own] = self._own
        return dict(sorted(out.items()))

    def heard_at(self, name: str) -> float | None:
        e = self._entries.get(name)
        return None if e is None else e.heard_at


def next_status(prev: MemberStatus | None, template: MemberStatus, now: float) -> MemberStatus:
    """Our next message: `template`'s fields, a fresh timestamp and the next sequence number."""
    seq = 0 if prev is None else (prev.sequence + 1) & 0xFFFFFFFF
    return replace(template, timestamp_ms=int(now * 1000), sequence=seq)
