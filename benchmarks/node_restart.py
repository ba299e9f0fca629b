"""`vpnlab restart` of a branch until its tunnel carries traffic again, for a public branch and one
behind NAT.

    .venv/bin/python benchmarks/node_restart.py [--repeat 3] [--json]

A timestamped ping (every 20 ms) runs from the branch's host (which stays up) to the hub's host
through the restart. Phases: the stop returned, the start returned (container wired, agent ready),
the first echo after the first lost one (traffic flows). Goal: <= 5 s from the command.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from vpnlab import lifecycle
from vpnlab.measure.labctl import LabCtl
from vpnlab.measure.outage import Probe, Report, Row, median, run_benchmark, seconds, table, verdict
from vpnlab.runtime.base import Runtime

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


def round_once(ctl: LabCtl, rt: Runtime, branch: str) -> dict[str, object]:
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


def rounds(ctl: LabCtl, rt: Runtime, args: argparse.Namespace) -> Iterator[tuple[str, Row]]:
    for _ in range(args.repeat):
        for branch in ("pub", "natted"):
            yield "", round_once(ctl, rt, branch)


def report(rows: list[Row], args: argparse.Namespace) -> Report:
    t = table("vpnlab restart of a branch: seconds from the command (median / max)",
              ("branch", "runs", *(label for _, label in PHASES), "goal", "verdict"))
    for branch in ("pub", "natted"):
        got = [r for r in rows if r["branch"] == branch]
        cells = []
        for key, _ in PHASES:
            vals, _worst = seconds(got, key)
            cells.append(f"{median(vals, '.2f')}/{max(vals):.2f}" if vals else "never")
        _, worst = seconds(got, "traffic_s")
        t.add_row("public" if branch == "pub" else "NAT", str(len(got)), *cells, f"<= {GOAL_S:g} s",
                  verdict(worst, GOAL_S))
    return t, "", {"goal_s": GOAL_S}


def main() -> None:
    run_benchmark(doc=__doc__, topology=TOPO, prefix="rstart", repeat=3, rounds=rounds, report=report,
                  ready=("both branches' IKE SAs", lambda ctl: all("hub" in ctl.ike_peers(b) for b in ("pub", "natted"))))


if __name__ == "__main__":
    main()
