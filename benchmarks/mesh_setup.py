"""Advanced Mesh VPN shortcut setup time, step by step, over repeated builds.

    .venv/bin/python benchmarks/mesh_setup.py [--rounds 10] [--nat]

Deploys a hub + 2 branches with a 2 s idle timeout (with --nat: both behind their own
endpoint-independent NAT device, shortcuts through hole punching, docs/mesh.md). Each round: one ICMP echo from br1's host to
br2's host (the session B sees), wait for the shortcut, read both branches' timelines, wait for the
idle teardown, repeat. Goal: first packet on the shortcut <= 100 ms after B saw the session.
Prints median, p90 and max of each step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.measure.report import STEPS, relative_ms, timeline
from vpnlab.runtime.docker import DockerRuntime

GOAL_MS = 100.0
TOPO = """\
name: setup
secret: {psk: "mesh-setup-psk"}
defaults: {mesh: {enabled: true, idle_timeout: 2}}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24}
  br1: {role: branch, lan: 10.1.0.0/24, hosts: 1}
  br2: {role: branch, lan: 10.2.0.0/24, hosts: 1}
"""
NAT_TOPO = TOPO.replace("idle_timeout: 2}", "idle_timeout: 2, hole_punching: true}").replace(
    "lan: 10.1.0.0/24,", "nat: endpoint-independent, lan: 10.1.0.0/24,").replace(
    "lan: 10.2.0.0/24,", "nat: endpoint-independent, lan: 10.2.0.0/24,")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--nat", action="store_true", help="both branches behind EIM NATs: hole punching")
    args = ap.parse_args()
    con = Console()
    rt = DockerRuntime()
    name = f"s{uuid.uuid4().hex[:6]}"
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "setup.yml"
        p.write_text(NAT_TOPO if args.nat else TOPO)
        try:
            labs.deploy(p, name=name, runtime=rt)
            ctl = LabCtl(rt, name)
            wait_for("star", lambda: "hub" in ctl.ike_peers("br1") and "hub" in ctl.ike_peers("br2"), 30)
            for i in range(args.rounds):
                # two echoes 50 ms apart: the first crosses the hub, the second should take the shortcut
                ctl.run("br1-h1", ["ping", "-n", "-c", "4", "-i", "0.05", "-W", "1", "10.2.0.10"])
                wait_for("shortcut", lambda: ctl.shortcuts("br1").get("br2") == "up", 10)
                time.sleep(0.3)
                tl = timeline(ctl.status("br2"), ctl.status("br1"), ctl.status("hub"), "br1", "br2", latest=True)
                rows.append(relative_ms(tl))
                wait_for("idle teardown", lambda: not ctl.shortcuts("br1") and not ctl.shortcuts("br2"), 15)
                time.sleep(0.5)
                con.print(f"round {i + 1}: first packet after {rows[-1].get('first_packet')} ms", style="dim")
        finally:
            labs.destroy(name, runtime=rt)
    how = ", both branches behind NAT (hole punching)" if args.nat else ""
    t = Table(title=f"shortcut setup over {len(rows)} builds{how}, ms after the session was seen at B")
    for c in ("step", "median", "p90", "max"):
        t.add_column(c, justify="right")
    for key, label in STEPS:
        vals = sorted(r[key] for r in rows if key in r)
        if not vals:
            t.add_row(label, "-", "-", "-")
            continue
        p90 = vals[min(len(vals) - 1, int(round(0.9 * (len(vals) - 1))))]
        t.add_row(label, f"{statistics.median(vals):.1f}", f"{p90:.1f}", f"{vals[-1]:.1f}")
    con.print(t)
    firsts = [r["first_packet"] for r in rows if "first_packet" in r]
    if firsts:
        med = statistics.median(firsts)
        con.print(f"goal: first packet <= {GOAL_MS:g} ms: median {med:.1f} ms -> {'met' if med <= GOAL_MS else 'MISSED'}")


if __name__ == "__main__":
    main()
