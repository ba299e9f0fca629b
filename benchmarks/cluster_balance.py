"""IKEv2 load balancer (issue #10): 300 clients over 3 gateways, the master's failover, a member killed.

    .venv/bin/python benchmarks/cluster_balance.py [--clients 300] [--advert 0.1 --advert 1] [--json]

Runs `vpnlab measure balance` on topologies/loadbalancer.yml twice: VRRPv3 with 0.1 s adverts and
with 1 s adverts. Goals: spread max - min <= 2 % of the clients and all up within 10 s; VIP
failover <= 1 s with 0.1 s adverts; the killed member's clients all back within DPD interval + 2 s.
Last, after the rejoin, a member that is not the master is killed: its clients back (same goal),
the spread over the other two, and how many of the others' IKE SAs were untouched (all of them).
Needs root and Docker (a lab of 20 containers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOPO = REPO / "topologies" / "loadbalancer.yml"
DPD_S = 10.0  # the agent's default dpd_interval_s


def advert(seconds: float):  # noqa: ANN201
    def tweak(data: dict) -> None:
        cluster = next(iter(data["clusters"].values()))
        cluster.setdefault("vrrp", {})["advert_int"] = seconds
        cluster["vrrp"]["version"] = 3
    return tweak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--advert", type=float, action="append",
                    help="VRRP advert interval in seconds (repeatable; default: 0.1 and 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from vpnlab.measure.balance import balance

    runs = {}
    for adv in args.advert or (0.1, 1.0):
        runs[adv] = balance(TOPO, clients=args.clients, tweak=advert(adv), say=lambda s: print(s, file=sys.stderr))
    if args.json:
        print(json.dumps({str(k): v for k, v in runs.items()}, indent=2))
        return 0
    n = args.clients + 6  # the swarm plus the lab's six branches
    print(f"{'advert':>7} {'all up s':>9} {'spread':>7} {'% of n':>7} {'stddev':>7} {'VIP s':>6} {'back s':>7} "
          f"{'spread after':>13} {'rejoin spread':>14} {'member kill: back s':>20} {'spread':>7} {'others kept':>12}")
    for adv, r in runs.items():
        c, f = r["connect"], r["failover"]
        k = f["member_killed"]
        print(f"{adv:>6g}s {c['all_up_s']:>9.2f} {c['spread']['max_minus_min']:>7} "
              f"{100 * c['spread']['max_minus_min'] / n:>6.2f}% {c['spread']['stddev']:>7} "
              f"{f['vip_failover_s']:>6.2f} {f['all_back_s']:>7.2f} {f['spread_after']['max_minus_min']:>13} "
              f"{f['spread_after_rejoin']['max_minus_min']:>14} {k['all_back_s']:>20.2f} "
              f"{k['spread_after']['max_minus_min']:>7} {k['others_sas_kept']:>5}/{k['others_sas_before']:<6}")
    print(f"goals: spread <= 2 % ({0.02 * n:.0f}), all up <= 10 s, VIP <= 1 s at 0.1 s adverts, "
          f"all back <= DPD {DPD_S:g} s + 2 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
