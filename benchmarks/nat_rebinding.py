"""ESP after a forced NAT rebinding: the NAT device's conntrack is flushed (`conntrack -F`), so the
branch's next packet gets a new mapping (a new public port behind a symmetric NAT) and the hub must
follow it (RFC 7296 §2.23) without a rekey.

    .venv/bin/python benchmarks/nat_rebinding.py [--repeat 3] [--json]

A timestamped ping (every 20 ms) runs through the flush; the figure is the time from the flush to
the first echo after the first lost one (or to the first echo sent after it, if none was lost).
Goal: <= 1 s when the branch side talks. When only the hub side talks, nothing can cross the NAT
until the branch sends (a NAT keepalive or its DPD check): that row is bounded by those timers,
shown for information.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

from vpnlab.measure.labctl import LabCtl
from vpnlab.measure.outage import Probe, Report, Row, median, run_benchmark, seconds, table, verdict
from vpnlab.runtime.base import Runtime

GOAL_S = 1.0
TOPO = """\
name: rebind
secret: {psk: "rebinding-psk"}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  eim: {role: branch, nat: endpoint-independent, lan: 10.1.0.0/24, hosts: 1}
  sym: {role: branch, nat: symmetric, lan: 10.2.0.0/24, hosts: 1}
"""
HOST = {"hub": "10.0.0.10", "eim": "10.1.0.10", "sym": "10.2.0.10"}


def spis(ctl: LabCtl, node: str) -> set[tuple[str, str]]:
    return {(c["spi_in"], c["spi_out"]) for c in ctl.status(node)["child_sas"] if c["state"] == "installed"}


def round_once(ctl: LabCtl, rt: Runtime, branch: str, side: str) -> dict[str, object]:
    src, dst = (branch, "hub") if side == "branch" else ("hub", branch)
    before = spis(ctl, branch)
    with Probe(rt, ctl.cname(f"{src}-h1"), HOST[dst]) as probe:
        probe.wait_reply(after=time.time() + 0.2)
        fault = time.time()
        code, out = ctl.run(f"{branch}-nat", ["conntrack", "-F"])
        assert code == 0, out
        probe.wait_reply(after=fault + 0.1, timeout=60)
        got = probe.outage(fault)
    return {"branch": branch, "talks": side, "lost": got.lost, "recovered_s": got.recovered_s,
            "rekeyed": spis(ctl, branch) != before}


def rounds(ctl: LabCtl, rt: Runtime, args: argparse.Namespace) -> Iterator[tuple[str, Row]]:
    for side in ("branch", "hub"):
        for branch in ("eim", "sym"):
            for _ in range(args.repeat if side == "branch" else 1):
                yield "", round_once(ctl, rt, branch, side)


def report(rows: list[Row], args: argparse.Namespace) -> Report:
    t = table("conntrack -F on the NAT device -> first echo through the new mapping, seconds",
              ("NAT", "talks", "runs", "lost", "median", "max", "rekey", "goal", "verdict"))
    for side in ("branch", "hub"):
        for branch in ("eim", "sym"):
            got = [r for r in rows if (r["branch"], r["talks"]) == (branch, side)]
            vals, worst = seconds(got, "recovered_s")
            t.add_row("EIM" if branch == "eim" else "symmetric", side, str(len(got)),
                      str(max(int(r["lost"]) for r in got)), median(vals),
                      f"{worst:.3f}" if worst is not None else "never",
                      "yes" if any(r["rekeyed"] for r in got) else "no",
                      f"<= {GOAL_S:g} s" if side == "branch" else "-",
                      verdict(worst, GOAL_S) if side == "branch" else "info")
    note = ("lost: most echoes lost in one run. Hub side only: the hub cannot cross the NAT until the branch "
            "sends (NAT keepalive or DPD), so that row is not held to the goal.")
    return t, note, {"goal_s": GOAL_S}


def main() -> None:
    run_benchmark(doc=__doc__, topology=TOPO, prefix="rebind", repeat=3, rounds=rounds, report=report,
                  ready=("both branches' IKE SAs", lambda ctl: all("hub" in ctl.ike_peers(b) for b in ("eim", "sym"))))


if __name__ == "__main__":
    main()
