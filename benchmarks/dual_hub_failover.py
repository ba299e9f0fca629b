"""Dual-hub failover: two branches on two hubs, the hub that carries their traffic is stopped
(`vpnlab stop`: the agent sends its DELETEs) or killed (SIGKILL: only DPD can tell).

    .venv/bin/python benchmarks/dual_hub_failover.py [--repeat 2] [--dpd 10] [--json]

A timestamped ping (every 20 ms) runs from d's host to e's host through the fault; failover is the
time from the fault to the first echo after the first lost one. Goal: <= DPD interval + 2 s.
The hub comes back (`vpnlab start`) between rounds.
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


def round_once(ctl: LabCtl, rt: DockerRuntime, how: str) -> dict[str, object]:
    with Probe(rt, ctl.cname("d-h1"), "10.2.0.10") as probe:
        hub = carrier(ctl, probe)
        fault = time.time()
        if how == "stop":
            lifecycle.stop_node(ctl.lab, hub, rt)
        else:
            rt.client.api.kill(ctl.cname(hub))
        probe.wait_reply(after=fault + 0.1, timeout=60)
        got = probe.outage(fault)
    lifecycle.start_node(ctl.lab, hub, rt)
    wait_for("both branches on both hubs again", lambda: all_up(ctl), 60)
    return {"how": how, "hub": hub, "lost": got.lost, "failover_s": got.recovered_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dpd", type=int, default=10, help="dpd_interval of every router, seconds")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    con, rt = Console(), DockerRuntime()
    goal = args.dpd + 2.0
    rows: list[dict[str, object]] = []
    with temporary_lab(rt, TOPO.format(dpd=args.dpd), "fover") as ctl:
        wait_for("both branches on both hubs", lambda: all_up(ctl), 60)
        for i in range(args.repeat):
            for how in ("stop", "kill"):
                rows.append(round_once(ctl, rt, how))
                con.print(f"round {i + 1} {how}: {rows[-1]}", style="dim", markup=False)
    out = {"dpd_interval_s": args.dpd, "goal_s": goal, "rounds": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    t = Table(title=f"dual-hub failover, DPD every {args.dpd} s: fault -> first echo via the other hub")
    for c in ("fault", "runs", "lost", "median s", "max s", "goal", "verdict"):
        t.add_column(c, justify="right")
    for how in ("stop", "kill"):
        got = [r for r in rows if r["how"] == how]
        vals = [float(r["failover_s"]) for r in got if r["failover_s"] is not None]  # type: ignore[arg-type]
        worst = max(vals) if len(vals) == len(got) and vals else None
        lost = statistics.median(int(r["lost"]) for r in got) if got else 0  # type: ignore[call-overload]
        t.add_row(how, str(len(got)), f"{lost:g}", f"{statistics.median(vals):.2f}" if vals else "-",
                  f"{worst:.2f}" if worst is not None else "never", f"<= {goal:g} s",
                  "met" if worst is not None and worst <= goal else "MISSED")
    con.print(t)


if __name__ == "__main__":
    main()
