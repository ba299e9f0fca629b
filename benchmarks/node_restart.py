"""`vpnlab restart` of a branch until its tunnel carries traffic again, for a public branch and one
behind NAT.

    .venv/bin/python benchmarks/node_restart.py [--repeat 3] [--json]

A timestamped ping (every 20 ms) runs from the branch's host (which stays up) to the hub's host
through the restart. Phases: the stop returned, the start returned (container wired, agent ready),
the first echo after the first lost one (traffic flows). Goal: <= 5 s from the command.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from rich.console import Console
from rich.table import Table

from vpnlab import lifecycle
from vpnlab.measure.labctl import LabCtl, temporary_lab, wait_for
from vpnlab.measure.outage import Probe
from vpnlab.runtime.docker import DockerRuntime

GOAL_S = 5.0
TOPO = """\
name: restart
secret: {psk: "restart-bench-psk"}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  pub: {role: branch, lan: 10.1.0.0/24, hosts: 1}
  natted: {role: branch, nat: true, lan: 10.2.0.0/24, hosts: 1}
"""
PHASES = (("stopped_s", "stopped"), ("ready_s", "agent ready"), ("traffic_s", "traffic"))


def round_once(ctl: LabCtl, rt: DockerRuntime, branch: str) -> dict[str, object]:
    with Probe(rt, ctl.cname(f"{branch}-h1"), "10.0.0.10") as probe:
        probe.wait_reply(after=time.time() + 0.2)
        t0 = time.time()
        lifecycle.stop_node(ctl.lab, branch, rt)  # what `vpnlab restart` does, in its two steps
        stopped = time.time()
        lifecycle.start_node(ctl.lab, branch, rt)
        ready = time.time()
        probe.wait_reply(after=ready, timeout=60)
        got = probe.outage(t0)
    return {"branch": branch, "stopped_s": stopped - t0, "ready_s": ready - t0, "traffic_s": got.recovered_s,
            "lost": got.lost}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    con, rt = Console(), DockerRuntime()
    rows: list[dict[str, object]] = []
    with temporary_lab(rt, TOPO, "rstart") as ctl:
        wait_for("both branches' IKE SAs", lambda: all("hub" in ctl.ike_peers(b) for b in ("pub", "natted")), 60)
        for _ in range(args.repeat):
            for branch in ("pub", "natted"):
                rows.append(round_once(ctl, rt, branch))
                con.print(f"{rows[-1]}", style="dim", markup=False)
    if args.json:
        print(json.dumps({"goal_s": GOAL_S, "rounds": rows}, indent=2))
        return
    t = Table(title="vpnlab restart of a branch: seconds from the command (median / max)")
    for c in ("branch", "runs", *(label for _, label in PHASES), "goal", "verdict"):
        t.add_column(c, justify="right")
    for branch in ("pub", "natted"):
        got = [r for r in rows if r["branch"] == branch]
        cells = []
        for key, _ in PHASES:
            vals = [float(r[key]) for r in got if r[key] is not None]  # type: ignore[arg-type]
            cells.append(f"{statistics.median(vals):.2f}/{max(vals):.2f}" if vals else "never")
        worst = [r["traffic_s"] for r in got]
        ok = all(w is not None and float(w) <= GOAL_S for w in worst)  # type: ignore[arg-type]
        t.add_row("public" if branch == "pub" else "NAT", str(len(got)), *cells, f"<= {GOAL_S:g} s",
                  "met" if ok else "MISSED")
    con.print(t)


if __name__ == "__main__":
    main()
