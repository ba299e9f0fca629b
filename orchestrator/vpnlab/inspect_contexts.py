"""The routing-contexts table of `vpnlab inspect LAB` (docs/hsvpn.md): per router and context, its
table, LANs, the device that carries it over the tunnel with its counters, and the peers it reaches;
for HSVPN's tagged SAs, per-context packet and byte counters of each SA."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table


def contexts_status(node: Any) -> dict[str, Any]:
    return ((node.agent or {}).get("services") or {}).get("contexts") or {}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def contexts_table(view: Any) -> Table | None:
    """None when no router of the lab has contexts."""
    rows = [(n, contexts_status(n)) for n in view.nodes]
    rows = [(n, st) for n, st in rows if st.get("contexts")]
    if not rows:
        return None
    table = Table(title=f"routing contexts ({rows[0][1].get('method', '?')})", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for header in ("router", "context", "table", "LANs", "carried by", "in", "out", "peers / SAs"):
        table.add_column(header, no_wrap=header in ("router", "context"), overflow="fold")
    for n, st in rows:
        for i, c in enumerate(st["contexts"]):
            sas = "\n".join(
                f"{s.get('peer', '?')} tag {s.get('tag', '-')}: {s.get('packets_in', 0)}/{s.get('packets_out', 0)} pkts"
                for s in c.get("sas") or []
            )
            table.add_row(
                f"{n.name} ({st.get('mode', '?')})" if i == 0 else "",
                c.get("name", "?"),
                str(c.get("table", "?")),
                ", ".join(c.get("lans", [])),
                str(c.get("device", "-")),
                f"{_size(c.get('bytes_in'))}\n{c.get('packets_in', 0)} pkts",
                f"{_size(c.get('bytes_out'))}\n{c.get('packets_out', 0)} pkts",
                sas or ", ".join(c.get("peers", [])),
            )
    return table
