"""The userspace engine's SA table: which SA carries an inner packet, and whether a decrypted one may
pass. Pure: no sockets, no netlink, no threads; the clock and the rng come in from the engine.

Outbound: among the SAs that carry outbound traffic (the newest of each reqid), an inner (src, dst)
pair goes to the SA whose remote selectors cover dst with the longest prefix, then the highest
`ChildSA.preference`, then the earliest installed, among those whose local selectors cover src
(RFC 4301: both selectors must match). dst covered but src outside every candidate's local
selectors: a policy drop. Decisions are memoised per (src, dst) pair.

Inbound: an SA accepts only inner packets inside its own selectors (a peer may only send what it
negotiated), memoised per SA.

Every change builds new lookup tables and swaps them in with one assignment each, so the packet
threads read without a lock; the engine serialises the changes themselves.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.esp.codec import EspInbound, EspOutbound, Rng
from vpnlab_agent.sa import ChildSA, SACounters

log = logging.getLogger(__name__)

CACHE_LIMIT = 4096  # memoised (src, dst) decisions per table; cleared when full

NO_ROUTE = object()  # memoised outbound verdicts besides an entry
POLICY = object()

# on_lifetime(spi_in, hard): the SA crossed its soft (hard=False) or hard byte lifetime (bytes both ways),
# or ran out of sequence numbers (hard). Called once each, from a packet thread: hand it over to the
# IKE event loop thread-safely. After a hard expiry the SA passes nothing until it is removed.
LifetimeHandler = Callable[[int, bool], None]

Nets = tuple[tuple[int, int], ...]  # (network, netmask) as ints


def nets(cidrs: Iterable[str]) -> Nets:
    out = []
    for c in cidrs:
        n = ipaddress.IPv4Network(c, strict=False)
        out.append((int(n.network_address), int(n.netmask)))
    return tuple(out)


def inside(addr: int, networks: Nets) -> bool:
    for net, mask in networks:
        if addr & mask == net:
            return True
    return False


@dataclass(eq=False)
class Entry:
    """One installed SA pair with everything the packet loops need precomputed."""

    sa: ChildSA
    out: EspOutbound
    inb: EspInbound
    counters: SACounters
    addr: tuple[str, int]
    local_nets: Nets
    remote_nets: Nets
    next_limit: float  # bytes (both ways) at which the next lifetime event fires
    in_cache: dict[int, bool] = field(default_factory=dict)
    soft_fired: bool = False
    expired: bool = False


def make_entry(sa: ChildSA, clock: Callable[[], float], rng: Rng) -> Entry:
    """Raises ValueError for keys or selectors the codec refuses."""
    counters = SACounters()
    out = EspOutbound(sa.spi_out, sa.algorithm, sa.enc_key_out, sa.integ_key_out, counters,
                      trailer=sa.trailer, clock=clock, rng=rng)
    inb = EspInbound(sa.spi_in, sa.algorithm, sa.enc_key_in, sa.integ_key_in, counters,
                     trailer=sa.trailer, clock=clock)
    limits = [x for x in (sa.soft_lifetime_bytes, sa.hard_lifetime_bytes) if x]
    return Entry(sa, out, inb, counters, (sa.remote_addr, sa.remote_port), nets(sa.local_ts), nets(sa.remote_ts),
                 float(min(limits)) if limits else float("inf"))


class SaTable:
    def __init__(self, on_lifetime: LifetimeHandler | None = None) -> None:
        self.on_lifetime = on_lifetime
        self.entries: dict[int, Entry] = {}  # spi_in -> entry, in install order
        self.inbound: dict[int, Entry] = {}  # read by the inbound loop; replaced, never mutated
        self.current: dict[int, Entry] = {}  # reqid -> newest entry, which carries outbound traffic
        # ([(mask, {net: candidates best first})] longest mask first, memo (src << 32 | dst) -> Entry,
        # NO_ROUTE or POLICY): one tuple, swapped in one assignment, so no decision made on an old
        # table can land in a new memo
        self._lookup: tuple[list[tuple[int, dict[int, tuple[Entry, ...]]]], dict[int, Any]] = ([], {})

    def last_inbound(self) -> dict[int, float]:
        return {spi: e.counters.last_in for spi, e in self.inbound.items()}  # `inbound` is never mutated

    # ---- changes (the engine serialises them) -----------------------------------------------

    def add(self, entry: Entry) -> None:
        """Install; make-before-break: a known reqid's outbound traffic moves to the new SA at once."""
        sa = entry.sa
        if sa.spi_in in self.entries:
            raise ValueError(f"SA with inbound SPI {sa.spi_in:#010x} is already installed")
        self.entries[sa.spi_in] = entry
        self.inbound = {**self.inbound, sa.spi_in: entry}
        self.current[sa.reqid] = entry
        self._rebuild()

    def remove(self, spi_in: int) -> Entry:
        """Uninstall; a reqid's outbound traffic goes back to its newest remaining SA. KeyError if unknown."""
        entry = self.entries.pop(spi_in)
        self.inbound = {k: v for k, v in self.inbound.items() if k != spi_in}
        reqid = entry.sa.reqid
        if self.current.get(reqid) is entry:
            older = [e for e in self.entries.values() if e.sa.reqid == reqid]
            if older:
                self.current[reqid] = older[-1]
            else:
                del self.current[reqid]
        self._rebuild()
        return entry

    def _rebuild(self) -> None:
        by_len: dict[int, dict[int, list[tuple[int, int, Entry]]]] = {}
        for order, entry in enumerate(self.current.values()):
            for net, mask in entry.remote_nets:
                by_len.setdefault(mask, {}).setdefault(net, []).append((-entry.sa.preference, order, entry))
        table = sorted(
            ((mask, {net: tuple(e for *_, e in sorted(c, key=lambda t: t[:2])) for net, c in nets_.items()})
             for mask, nets_ in by_len.items()),
            key=lambda kv: -kv[0],
        )
        self._lookup = (table, {})
        for entry in self.entries.values():
            entry.in_cache = {}

    # ---- what the routes and the MTU follow ------------------------------------------------

    def outbound_entries(self) -> list[Entry]:
        return list(self.current.values())

    def remote_prefixes(self) -> list[str]:
        """Every remote selector of an outbound SA, normalised, once."""
        return sorted({str(ipaddress.IPv4Network(c, strict=False)) for e in self.current.values() for c in e.sa.remote_ts})

    # ---- packet-thread lookups ---------------------------------------------------------------

    @staticmethod
    def _lookup_out(table: list[tuple[int, dict[int, tuple[Entry, ...]]]], key: int) -> Entry | object:
        """Slow path for an inner (src << 32 | dst): see the module docstring."""
        src, dst = key >> 32, key & 0xFFFFFFFF
        verdict: object = NO_ROUTE
        for mask, by_net in table:
            for entry in by_net.get(dst & mask, ()):
                if inside(src, entry.local_nets):
                    return entry
                verdict = POLICY
        return verdict

    def route(self, key: int) -> Any:
        """The entry for an inner (src << 32 | dst), or NO_ROUTE / POLICY; memoised."""
        table, cache = self._lookup
        entry = cache.get(key)
        if entry is None:
            entry = self._lookup_out(table, key)
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[key] = entry
        return entry

    @staticmethod
    def accepts(entry: Entry, key: int) -> bool:
        """Whether a packet decrypted by entry, inner (src << 32 | dst), is inside its selectors; memoised."""
        cache = entry.in_cache
        ok = cache.get(key)
        if ok is None:
            ok = inside(key >> 32, entry.remote_nets) and inside(key & 0xFFFFFFFF, entry.local_nets)
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[key] = ok
        return ok

    def lifetime(self, entry: Entry, exhausted: bool = False) -> None:
        """Called from a packet loop when an SA's byte count crossed entry.next_limit, or (exhausted)
        when its sequence numbers ran out."""
        sa, used = entry.sa, entry.counters.bytes_in + entry.counters.bytes_out
        hard = exhausted or (bool(sa.hard_lifetime_bytes) and used >= sa.hard_lifetime_bytes)
        if entry.expired:
            return
        if hard:
            entry.expired = True
            entry.next_limit = float("inf")
        elif not entry.soft_fired:
            entry.soft_fired = True
            entry.next_limit = float(sa.hard_lifetime_bytes) if sa.hard_lifetime_bytes else float("inf")
        else:
            return
        if self.on_lifetime is not None:
            try:
                self.on_lifetime(sa.spi_in, hard)
            except Exception:  # noqa: BLE001 - never let a callback kill a packet loop
                log.exception("lifetime handler failed for SPI %#010x", sa.spi_in)


def follow_peer(entry: Entry | None, spi_in: int, addr: tuple[str, int],
                moved: Callable[[int, tuple[str, int]], None] | None) -> None:
    """The peer's NAT mapping changed (RFC 3948, RFC 7296 §2.23): ESP of this SA goes to `addr`
    from the next packet on (the packet loops read entry.addr per packet), and `moved` (IKE's
    handler, when the change was seen in an authenticated inbound packet) is told."""
    if entry is None:
        from vpnlab_agent.dataplane.base import EngineError

        raise EngineError(f"no SA with inbound SPI {spi_in:#010x}")
    entry.addr = addr
    if moved is not None:
        try:
            moved(spi_in, addr)
        except Exception:  # noqa: BLE001 - never let a callback kill a packet loop
            log.exception("peer-moved handler failed for SPI %#010x", spi_in)
