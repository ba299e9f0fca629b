"""Dual-hub failover: two branches on two hubs, the hub that carries their traffic is stopped
(`vpnlab stop`: the agent sends its DELETEs) or killed (SIGKILL: only DPD can tell).

    .venv/bin/python benchmarks/dual_hub_failover.py [--repeat 2] [--dpd 10] [--json]

A timestamped ping (every 20 ms) runs from d's host to e's host through the fault; failover is the
time from the fault to the first echo after the first lost one. Goal: <= DPD interval + 2 s.
The hub comes back (`vpnlab start`) between rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator

from vpnlab import lifecycle
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.measure.outage import Probe, Report, Row, median, run_benchmark, seconds, table, verdict
from vpnlab.runtime.base import Runtime

TOPO = """\
name: dual
secret: {{psk: "dual-hub-psk"}}
defaults: {{crypto: {{dpd_interval: {dpd}}}}}
nodes:
  h1: {{role: hub, lan: 10.0.0.0/24}}
  h2: {{role: hub, lan: 10.9.0.0/24}}
  d: {{role: branch, hubs: [h1, h2], lan: 10.1.0.0/24, hosts: 1}}
  e: {{role: branch, hubs: [h1, h2], lan: 10.2.0.0/24, hosts: 1}}
"""
HUBS = ("h1", "h2")


def packets_out(ctl: LabCtl, node: str) -> dict[str, int]:
    return {c["peer"]: int(c.get("packets_out", 0)) for c in ctl.status(node)["child_sas"] if c["state"] == "installed"}


def carrier(ctl: LabCtl, probe: Probe) -> str:
    """The hub d's packets to e take: the one whose child SA counts the probe's packets."""
    before = packets_out(ctl, "d")
    probe.wait_reply(after=time.time() + 0.3)
    after = packets_out(ctl, "d")
    return max(HUBS, key=lambda h: after.get(h, 0) - before.get(h, 0))


def all_up(ctl: LabCtl) -> bool:
    return all(set(HUBS) <= set(ctl.ike_peers(b)) for b in ("d", "e"))


def round_once(ctl: LabCtl, rt: Runtime, how: str) -> dict[str, object]:
    with Probe(rt, ctl.cname("d-h1"), "10.2.0.10") as probe:
        hub = carrier(ctl, probe)
        fault = time.time()
        if how == "stop":
            lifecycle.stop_node(ctl.lab, hub, rt)
        else:
            rt.client.api.kill(ctl.cname(hub))  # type: ignore[attr-defined]
        probe.wait_reply(after=fault + 0.1, timeout=60)
        got = probe.outage(fault)
    lifecycle.start_node(ctl.lab, hub, rt)
    wait_for("both branches on both hubs again", lambda: all_up(ctl), 60)
    return {"how": how, "hub": hub, "lost": got.lost, "failover_s": got.recovered_s}


def rounds(ctl: LabCtl, rt: Runtime, args: argparse.Namespace) -> Iterator[tuple[str, Row]]:
    for i in range(args.repeat):
        for how in ("stop", "kill"):
            yield f"round {i + 1} {how}: ", round_once(ctl, rt, how)


def report(rows: list[Row], args: argparse.Namespace) -> Report:
    goal = args.dpd + 2.0
    t = table(f"dual-hub failover, DPD every {args.dpd} s: fault -> first echo via the other hub",
              ("fault", "runs", "lost", "median s", "max s", "goal", "verdict"))
    for how in ("stop", "kill"):
        got = [r for r in rows if r["how"] == how]
        vals, worst = seconds(got, "failover_s")
        lost = statistics.median(int(r["lost"]) for r in got) if got else 0
        t.add_row(how, str(len(got)), f"{lost:g}", median(vals, ".2f"),
                  f"{worst:.2f}" if worst is not None else "never", f"<= {goal:g} s", verdict(worst, goal))
    return t, "", {"dpd_interval_s": args.dpd, "goal_s": goal}


def main() -> None:
    run_benchmark(doc=__doc__, topology=lambda args: TOPO.format(dpd=args.dpd), prefix="fover", repeat=2,
                  rounds=rounds, report=report, ready=("both branches on both hubs", all_up),
                  options=lambda ap: ap.add_argument("--dpd", type=int, default=10,
                                                     help="dpd_interval of every router, seconds"))


if __name__ == "__main__":
    main()
