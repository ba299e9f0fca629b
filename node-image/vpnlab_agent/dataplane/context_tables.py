"""The userspace engine's routing contexts (docs/hsvpn.md): one SA table per context, and which
context a received packet belongs to. Pure, like sa_table.py: no sockets, no netlink, no threads.

Each context has its own TUN device (`t-<context>`, in the context's routing table) and its own
`SaTable`. An SA enters the tables of the contexts it carries:
- an HSVPN SA (`HsvpnTrailer`): one entry per context of its negotiated tag map, with that
  context's own selectors (what the contexts config says it reaches through that peer) and the
  context's tag, which the outbound loop hands to the codec;
- a per-network SA (`ChildSA.context` set): one entry, in its context's table, tag 0;
- any other SA stays in the engine's main table (not here).
The entries of one SA share its codec objects and counters; each keeps its own per-context
counters (`ContextEntry.cc`) for `inspect`.

Received: the SPI gives the SA, the codec gives the tag it read, `by_tag` gives the context entry;
a tag outside the SA's map is dropped and counted, never delivered into another context.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.dataplane.sa_table import Entry, LifetimeHandler, Nets, SaTable, nets
from vpnlab_agent.sa import SACounters


@dataclass(frozen=True)
class ContextSpec:
    """What the engine needs of one context: its table, and per peer what it reaches there."""

    name: str
    table: int
    reach: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)  # peer -> (local, remote)


@dataclass(eq=False)
class ContextEntry(Entry):
    context: str = ""
    tag: int = 0
    cc: SACounters = field(default_factory=SACounters)  # this context's share of the SA's traffic


class ContextTables:
    def __init__(self, contexts: list[ContextSpec], on_lifetime: LifetimeHandler | None = None) -> None:
        self.contexts = {c.name: c for c in contexts}
        self.tables = {c.name: SaTable(on_lifetime) for c in contexts}
        self.by_spi: dict[int, dict[int, ContextEntry]] = {}  # spi_in -> {tag: entry}; replaced, never mutated
        self.tag_dropped: dict[int, int] = {}  # spi_in -> received packets with a tag outside the map

    @staticmethod
    def carries(entry: Entry) -> bool:
        """Whether this SA belongs in the context tables (else the engine's main table)."""
        return bool(entry.sa.context) or entry.sa.trailer.kind == "hsvpn"

    def add(self, entry: Entry) -> list[str]:
        """Put the SA into the tables of its contexts; the contexts it entered (ValueError if none)."""
        sa = entry.sa
        wanted: list[tuple[str, int]] = []
        if sa.trailer.kind == "hsvpn":
            tags: dict[int, str] = getattr(sa.trailer, "tags", {})
            wanted = [(name, tag) for tag, name in tags.items() if name in self.tables]
        elif sa.context:
            if sa.context not in self.tables:
                raise ValueError(f"SA {sa.name}: unknown routing context {sa.context!r}")
            wanted = [(sa.context, 0)]
        if not wanted:
            raise ValueError(f"SA {sa.name}: none of its contexts exists here")
        per: dict[int, ContextEntry] = {}
        for name, tag in wanted:
            local, remote = self._selectors(name, entry)
            ce = ContextEntry(**{f.name: getattr(entry, f.name) for f in dataclasses.fields(Entry)},
                              context=name, tag=tag)
            ce.local_nets, ce.remote_nets, ce.in_cache = local, remote, {}
            self.tables[name].add(ce)
            per[tag] = ce
        self.by_spi = {**self.by_spi, sa.spi_in: per}
        return [name for name, _ in wanted]

    def _selectors(self, context: str, entry: Entry) -> tuple[Nets, Nets]:
        """The context's own selectors towards this peer, inside the SA's (never wider)."""
        reach = self.contexts[context].reach.get(entry.sa.name)
        if reach is None:
            return entry.local_nets, entry.remote_nets
        return nets(reach[0]), nets(reach[1])

    def remove(self, spi_in: int) -> list[str]:
        per = self.by_spi.get(spi_in, {})
        for ce in per.values():
            self.tables[ce.context].remove(spi_in)
        self.by_spi = {k: v for k, v in self.by_spi.items() if k != spi_in}
        self.tag_dropped.pop(spi_in, None)
        return [ce.context for ce in per.values()]

    def remote_prefixes(self, context: str) -> list[str]:
        """The context's own remote selectors of its outbound SAs (not the SAs' whole union)."""
        nets_ = {(net, mask) for e in self.tables[context].outbound_entries() for net, mask in e.remote_nets}
        return sorted(str(ipaddress.IPv4Network((net, bin(mask).count("1")))) for net, mask in nets_)

    def has(self, spi_in: int) -> bool:
        return spi_in in self.by_spi

    def status(self) -> dict[str, list[dict[str, Any]]]:
        """Per context: its SAs with tag and this context's counters."""
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in self.tables}
        for spi, per in list(self.by_spi.items()):
            for tag, ce in per.items():
                out[ce.context].append({
                    "peer": ce.sa.name, "spi_in": f"{spi:08x}", "tag": tag,
                    "tag_dropped": self.tag_dropped.get(spi, 0), **dataclasses.asdict(ce.cc),
                })
        return out
