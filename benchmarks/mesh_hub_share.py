"""Advanced Mesh VPN, one pair: a flow between two branches, star (mesh off) against mesh on.

    .venv/bin/python benchmarks/mesh_hub_share.py [--duration 10] [--pair br1:br2] [--udp] [--bitrate 20M]

Goal: with mesh on, the hub carries < 1 % of the pair's bytes (the star: 100 %). Prints the
per-pair table and the shortcut timeline; runs on topologies/mesh.yml through the same code as
`vpnlab measure hub-traffic`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnlab.measure.hub_traffic import hub_traffic
from vpnlab.measure.report import STEPS

REPO = Path(__file__).resolve().parents[1]
GOAL_SHARE_PCT = 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topology", default=str(REPO / "topologies" / "mesh.yml"))
    ap.add_argument("--pair", default="br1:br2")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--udp", action="store_true")
    ap.add_argument("--bitrate", default="20M")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    con = Console()
    res = hub_traffic(args.topology, pairs=args.pair, duration=args.duration, udp=args.udp, bitrate=args.bitrate,
                      say=lambda s: con.print(s, style="dim", markup=False))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    t = Table(title=f"{args.pair}, {args.duration:g} s {'UDP' if args.udp else 'TCP'} at {args.bitrate}bit/s")
    extra = ("lost", "out of order") if args.udp else ("retransmits", "Mbit/s")
    for c in ("mesh", "hub bytes", "shortcut bytes", "hub share", "hub packets", "setup ms", *extra, "goal"):
        t.add_column(c, justify="right")
    for mode, run in res["runs"].items():
        p = run["pairs"][0]
        ok = "" if mode == "off" else ("met" if (p["hub_share_pct"] or 0) < GOAL_SHARE_PCT else "MISSED")
        ip = p["iperf"]
        more = (ip.get("lost"), ip.get("out_of_order")) if args.udp else (ip.get("retransmits"), ip.get("mbps"))
        t.add_row(mode, str(p["hub_bytes"]), str(p["shortcut_bytes"]), f"{p['hub_share_pct']} %",
                  str(p["hub_packets"]), str(p["setup_ms"]), *(str(x) for x in more), ok)
    con.print(t)
    rel = res["runs"]["on"]["pairs"][0]["timeline_ms"]
    tl = Table(title="shortcut timeline (ms after the session was seen at B)")
    tl.add_column("step")
    tl.add_column("ms", justify="right")
    for key, label in STEPS:
        tl.add_row(label, "-" if key not in rel else f"{rel[key]:.1f}")
    con.print(tl)


if __name__ == "__main__":
    main()
