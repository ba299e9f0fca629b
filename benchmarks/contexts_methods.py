"""Routing contexts: the three methods (hsvpn, tunnel-in-tunnel, per-network) in one run.

    .venv/bin/python benchmarks/contexts_methods.py [--methods hsvpn,tunnel-in-tunnel,per-network]
        [--sites 10] [--contexts 8] [--duration 5] [--skip-full] [--skip-scale]

1. topologies/hsvpn.yml (hub + 3 branches x 3 contexts, hosts in every context): every figure of
   `vpnlab measure contexts` (SA counts, MTU by DF sweep, overhead, TCP per context and in total,
   setup, uplink recovery, rekey cost). Goal: HSVPN throughput within 5 % of per-network.
2. A lab of --sites sites (hub + sites-1 branches) x --contexts contexts, no hosts (each branch
   router pings the hub router in every context, marked with the context's table): SA counts,
   seconds until every context of every site works after deploy, rekey cost.
   Goal: HSVPN all contexts up in <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnlab.measure.cli import contexts_table
from vpnlab.measure.contexts import METHODS, formulas, measure_contexts

ROOT = Path(__file__).resolve().parents[1]
GOAL_THROUGHPUT_PCT = 5.0
GOAL_SETUP_S = 5.0
NAMES = ["corp", "voice", "guest", "iot", "mgmt", "cam", "pos", "lab", "dev", "ops"]


def scale_topology(sites: int, contexts: int) -> str:
    names = NAMES[:contexts] if contexts <= len(NAMES) else [f"c{i}" for i in range(1, contexts + 1)]
    lines = ["name: ctxscale", 'secret: {psk: "contexts-bench"}', "nodes:"]
    for s in range(sites):
        node = "hub" if s == 0 else f"br{s}"
        lines.append(f"  {node}:\n    role: {'hub' if s == 0 else 'branch'}\n    contexts:")
        # every context reuses the same addresses: 10.<site>.0.0/24
        lines += [f"      - {{name: {n}, lan: 10.{s}.{0}.0/24}}" for n in names]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--contexts", type=int, default=8)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--outage", type=float, default=30.0)
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--json", type=Path, default=Path("contexts-bench.json"))
    args = ap.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m)
    con = Console()
    out: dict[str, object] = {}
    if not args.skip_full:
        full = measure_contexts(ROOT / "topologies" / "hsvpn.yml", methods=methods, duration=args.duration,
                                outage_s=args.outage, say=lambda s: con.print(s, style="dim", markup=False))
        out["full"] = full
        con.print(contexts_table(full))
        runs = full["runs"]
        if "hsvpn" in runs and "per-network" in runs:
            h, p = runs["hsvpn"]["throughput_total_mbps"], runs["per-network"]["throughput_total_mbps"]
            gap = 100.0 * (p - h) / p if p else float("nan")
            verdict = "met" if gap <= GOAL_THROUGHPUT_PCT else "NOT met"
            con.print(f"HSVPN {h:.0f} Mbit/s vs per-network {p:.0f} Mbit/s: {gap:+.1f} % "
                      f"(goal: within {GOAL_THROUGHPUT_PCT:g} %: {verdict})")
    if not args.skip_scale:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "ctxscale.yml"
            path.write_text(scale_topology(args.sites, args.contexts))
            scale = measure_contexts(path, methods=methods, quick=True,
                                     say=lambda s: con.print(s, style="dim", markup=False))
        out["scale"] = scale
        f = formulas(args.sites - 1, args.contexts)
        t = Table(title=f"{args.sites} sites x {args.contexts} contexts (no hosts)")
        for col in ("method", "IKE SAs (formula)", "child SAs (formula)", "inner (formula)", "deploy s",
                    "all contexts up s", "child rekey: msgs", "bytes", "CPU ms", "IKE rekey: msgs", "bytes", "CPU ms"):
            t.add_column(col, justify="left" if col == "method" else "right")
        for m, r in scale["runs"].items():
            c, rk, ri = r["counts"], r["rekey_all"], r["rekey_ike_all"]
            t.add_row(m, f"{c['ike_sas']} ({f[m]['ike_sas']})", f"{c['child_sas']} ({f[m]['child_sas']})",
                      f"{c['inner_tunnels']} ({f[m]['inner_tunnels']})", f"{r['deploy_s']:.1f}", f"{r['all_up_s']:.1f}",
                      str(rk["messages"]), str(rk["bytes"]), f"{rk['agent_cpu_s'] * 1000:.0f}",
                      str(ri["messages"]), str(ri["bytes"]), f"{ri['agent_cpu_s'] * 1000:.0f}")
        con.print(t)
        if "hsvpn" in scale["runs"]:
            up = scale["runs"]["hsvpn"]["all_up_s"] - scale["runs"]["hsvpn"]["deploy_s"]
            con.print(f"HSVPN: every context up {up:.1f} s after deploy returned "
                      f"(goal <= {GOAL_SETUP_S:g} s: {'met' if up <= GOAL_SETUP_S else 'NOT met'})")
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    con.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
