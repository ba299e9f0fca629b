"""The gateway-cluster table of `vpnlab inspect LAB` (docs/loadbalancer.md): one row per member.

What each member says about itself (VRRP state from keepalived, its own tunnels), and how the
current master sees it (load from the status messages, pending and handed-out redirects)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table


def _cluster(node: Any) -> dict[str, Any]:
    return ((node.agent or {}).get("services") or {}).get("cluster") or {}


def clusters_table(view: Any) -> Table | None:
    members = [n for n in view.nodes if _cluster(n)]
    if not members:
        return None
    masters = {c["cluster"]: c for n in members if (c := _cluster(n)).get("vrrp") == "MASTER"}
    table = Table(title="gateway clusters", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("cluster", "member", "VRRP", "own tunnels", "load (master's view)", "redirects from master",
                "status msgs ok/forged/replayed"):
        table.add_column(col)
    for n in members:
        c = _cluster(n)
        own = sum(1 for sa in (n.agent or {}).get("ike_sas", []) if sa.get("state") == "established")
        m = masters.get(c["cluster"])
        seen = (m or {}).get("members", {}).get(n.name, {})
        load = "-" if not seen.get("in_pool") else f"{seen.get('active')} (+{seen.get('pending', 0)} pending)"
        if seen.get("shunned_s"):  # its redirected clients never arrived: left out for now
            load += f", left out {seen['shunned_s']:g}s ({seen.get('missed', 0)} missed)"
        msgs = c.get("status_messages", {})
        table.add_row(c["cluster"], n.name, c.get("vrrp", "?"), str(own), load if m else "no master",
                      str(seen.get("redirects", "-")) if m else "-",
                      f"{msgs.get('accepted', 0)}/{msgs.get('forged', 0)}/{msgs.get('replayed', 0)}")
    return table
