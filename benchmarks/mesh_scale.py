"""Advanced Mesh VPN at scale: 1 hub + N branches (default 10), a flow for every pair at once.

    .venv/bin/python benchmarks/mesh_scale.py [--branches 10] [--duration 10] [--bitrate 2M] [--with-star]

Goal (10 branches, all 45 pairs): every shortcut comes up and the hub carries < 2 % of the bytes.
The flows are modest (--bitrate per flow) because every packet is encrypted in Python on 2 shared
cores; what is measured is where the bytes go, not how many there can be.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnlab.measure.hub_traffic import hub_traffic

GOAL_SHARE_PCT = 2.0


def topology(n: int) -> str:
    lines = ["name: scale", 'secret: {psk: "mesh-scale-psk"}', "defaults: {mesh: {enabled: true}}", "nodes:",
             "  hub: {role: hub, lan: 10.0.0.0/24}"]
    lines += [f"  br{i}: {{role: branch, lan: 10.{i}.0.0/24, hosts: 1}}" for i in range(1, n + 1)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--branches", type=int, default=10)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--bitrate", default="2M")
    ap.add_argument("--with-star", action="store_true", help="also run with mesh off, for comparison")
    args = ap.parse_args()
    con = Console()
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "scale.yml"
        p.write_text(topology(args.branches))
        res = hub_traffic(p, pairs="all", duration=args.duration, bitrate=args.bitrate,
                          modes=("off", "on") if args.with_star else ("on",),
                          say=lambda s: con.print(s, style="dim", markup=False))
    t = Table(title=f"{args.branches} branches, every pair at once, {args.duration:g} s TCP at {args.bitrate}bit/s")
    for c in ("mesh", "pairs", "shortcuts up", "hub bytes", "shortcut bytes", "hub share", "setup ms median/max",
              "flows failed", "goal"):
        t.add_column(c, justify="right")
    for mode, run in res["runs"].items():
        pairs = run["pairs"]
        up = sum(1 for p in pairs if p["shortcut_bytes"] > 0)
        hub_b = sum(p["hub_bytes"] for p in pairs)
        sc_b = sum(p["shortcut_bytes"] for p in pairs)
        share = 100.0 * hub_b / (hub_b + sc_b) if hub_b + sc_b else 0.0
        setups = [p["setup_ms"] for p in pairs if p["setup_ms"] is not None]
        failed = sum(1 for p in pairs if p["iperf"].get("error"))
        goal = "" if mode == "off" else ("met" if up == len(pairs) and share < GOAL_SHARE_PCT else "MISSED")
        t.add_row(mode, str(len(pairs)), str(up), str(hub_b), str(sc_b), f"{share:.3f} %",
                  f"{statistics.median(setups):.1f} / {max(setups):.1f}" if setups else "-", str(failed), goal)
    con.print(t)
    for p in res["runs"]["on"]["pairs"]:
        if p["shortcut_bytes"] == 0:
            con.print(f"{p['pair']}: no shortcut; refused: {p['refused'] or '-'}; timeline {p['timeline_ms']}",
                      markup=False)
    worst = sorted(res["runs"]["on"]["pairs"], key=lambda p: -(p["hub_share_pct"] or 0))[:5]
    con.print("highest hub shares with mesh on: " + ", ".join(f"{p['pair']} {p['hub_share_pct']} %" for p in worst))


if __name__ == "__main__":
    main()
