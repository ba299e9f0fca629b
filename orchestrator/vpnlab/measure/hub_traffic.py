"""`vpnlab measure hub-traffic`: the same iperf3 scenario on the classic star (mesh off) and with
Advanced Mesh VPN (mesh on), and what crossed the hub in each.

Each run deploys its own copy of the lab (mesh switched off or on for every agent branch), starts
one iperf3 server per flow in the destination branch's first host, runs every client at once, and
reads the hub's per-pair nftables counters (before, after, and their 0.5 s samples), the branches'
shortcut child SA counters and the shortcut timelines from the agents' status. Then it destroys
the copy. Results are plain dicts (JSON-ready); cli.py prints them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.measure import report
from vpnlab.measure.labctl import LabCtl
from vpnlab.runtime.base import Runtime
from vpnlab.topology.model import HUB_ROLES, Lab, Node

BASE_PORT = 5201
SETTLE_S = 1.5  # after the flows, so the last counters and samples are in


@dataclasses.dataclass(frozen=True)
class Flow:
    src: str  # branch names
    dst: str
    src_host: str
    dst_host: str
    dst_addr: str
    port: int


def branch_hosts(lab: Lab) -> dict[str, Node]:
    """The first host of every branch that has one."""
    out: dict[str, Node] = {}
    for n in lab.nodes:
        if n.role == "host" and n.router is not None and lab.node(n.router).role == "branch":
            out.setdefault(n.router, n)
    return out


def plan_flows(lab: Lab, pairs: str) -> list[Flow]:
    """`all` (every unordered pair of branches with hosts, once) or `a:b,c:d` (a's host sends to b's)."""
    hosts = branch_hosts(lab)
    if pairs.strip() == "all":
        wanted = list(itertools.combinations(sorted(hosts), 2))
    else:
        wanted = []
        for item in pairs.split(","):
            a, sep, b = item.strip().partition(":")
            if not sep or a == b:
                raise LabError(f"--pairs: {item.strip()!r} is not 'branch:branch'")
            for x in (a, b):
                if x not in hosts:
                    raise LabError(f"--pairs: {x!r} is not a branch with a host (branches: {', '.join(sorted(hosts))})")
            wanted.append((a, b))
    if not wanted:
        raise LabError("no pair of branches with hosts to measure")
    return [Flow(a, b, hosts[a].name, hosts[b].name, str(hosts[b].interfaces[0].address.ip), BASE_PORT + i)
            for i, (a, b) in enumerate(wanted)]


def with_mesh(lab: Lab, enabled: bool, name: str) -> Lab:
    """The lab with mesh on or off on every branch; its hubs count branch-to-branch bytes either way."""
    nodes = tuple(
        dataclasses.replace(n, mesh=dataclasses.replace(n.mesh, enabled=enabled)) if n.role == "branch"
        else dataclasses.replace(n, mesh=dataclasses.replace(n.mesh, count_pairs=True)) if n.role in HUB_ROLES
        else n
        for n in lab.nodes
    )
    return dataclasses.replace(lab, name=name, nodes=nodes)


def run_once(lab: Lab, rt: Runtime, flows: list[Flow], *, duration: float, udp: bool, bitrate: str,
             say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """One run on a deployed lab: flows at once, then counters and timelines."""
    labs.wait_tunnels(lab, rt)  # a flow into a tunnel that is not up yet meets its guard route
    ctl = LabCtl(rt, lab.name)
    hub = next(n.name for n in lab.nodes if n.role in ("hub", "gateway"))
    branches = sorted({f.src for f in flows} | {f.dst for f in flows})
    for f in flows:
        ctl.start_iperf3_server(f.dst_host, f.port)
    hub_before = ctl.status(hub)
    t_start = report.mesh_of(hub_before).get("now", 0.0)
    results: dict[Flow, dict[str, Any]] = {}

    def client(f: Flow) -> None:
        argv = ["iperf3", "-c", f.dst_addr, "-p", str(f.port), "-t", str(duration), "-J", "--get-server-output",
                "-b", bitrate] + (["-u", "-l", "1200"] if udp else [])
        code, out = ctl.run(f.src_host, argv)
        try:
            results[f] = json.loads(out[out.index("{"):]) if "{" in out else {"error": out.strip()}
        except ValueError:
            results[f] = {"error": out.strip()[-300:]}

    say(f"{lab.name}: {len(flows)} flow(s) for {duration:g} s ({'UDP' if udp else 'TCP'}, {bitrate}bit/s each)")
    threads = [threading.Thread(target=client, args=(f,)) for f in flows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    time.sleep(SETTLE_S)
    hub_after = ctl.status(hub)
    t_end = report.mesh_of(hub_after).get("now", 0.0)
    st = {b: ctl.status(b) for b in branches}
    pairs = []
    for f in flows:
        p0, b0 = report.hub_pair(hub_before, f.src, f.dst)
        p1, b1 = report.hub_pair(hub_after, f.src, f.dst)
        sc = report.shortcut_bytes(st[f.src], f.dst)
        tl = report.timeline(st[f.dst], st[f.src], hub_after, f.src, f.dst)
        rel = report.relative_ms(tl)
        refused = [r for b in (f.src, f.dst) for r in report.mesh_of(st[b]).get("refused", [])
                   if r.get("peer") in (f.src, f.dst)]
        pairs.append({
            "pair": f"{f.src}->{f.dst}",
            "hub_bytes": b1 - b0,
            "hub_packets": p1 - p0,
            "shortcut_bytes": sc,
            "hub_share_pct": report.share(b1 - b0, sc),
            "packets_via_hub_before_switchover": (p1 - p0) if tl and "routes_switched" in tl else None,
            "setup_ms": rel.get("first_packet"),
            "timeline_ms": rel,
            "refused": sorted({r["reason"] for r in refused}),
            "iperf": report.iperf_figures(results.get(f, {"error": "no result"}), udp),
        })
    hp0, hb0 = report.hub_total(hub_before)
    hp1, hb1 = report.hub_total(hub_after)
    ts, mbps = report.hub_series(report.mesh_of(hub_after).get("samples", []), t_start, t_end)
    return {"lab": lab.name, "pairs": pairs, "hub_total_bytes": hb1 - hb0, "hub_total_packets": hp1 - hp0,
            "series": {"t": ts, "mbps": mbps}}


def hub_traffic(topology: str | Path, *, pairs: str = "all", duration: float = 10.0, udp: bool = False,
                bitrate: str = "20M", runtime: Runtime | None = None, modes: tuple[str, ...] = ("off", "on"),
                say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Both runs, each on a fresh copy of the lab that is destroyed afterwards."""
    from vpnlab.environment import check_docker, check_privileges
    from vpnlab.image import ensure_image

    base = labs.load_lab(topology)
    flows = plan_flows(base, pairs)
    check_privileges()
    check_docker()
    rt = labs._runtime(runtime)
    image = ensure_image()
    out: dict[str, Any] = {"topology": str(topology), "duration_s": duration, "udp": udp, "bitrate": bitrate,
                           "flows": [dataclasses.asdict(f) for f in flows], "runs": {}}
    for mode in modes:
        name = f"{base.name[:8]}-{mode}"
        lab = with_mesh(base, mode == "on", name)
        labs.destroy(name, runtime=rt)
        say(f"deploying {name} (mesh {mode})")
        try:
            labs.deploy_lab(lab, image, runtime=rt)
            out["runs"][mode] = run_once(lab, rt, flows, duration=duration, udp=udp, bitrate=bitrate, say=say)
        finally:
            labs.destroy(name, runtime=rt)
    return out


def plot(result: dict[str, Any], path: str | Path) -> None:
    """Hub branch-to-branch throughput over time, one panel per run, same scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.5), sharey=True, squeeze=False)
    for ax, (mode, run) in zip(axes[0], runs.items()):
        ax.plot(run["series"]["t"], run["series"]["mbps"], drawstyle="steps-post")
        ax.set_title(f"mesh {mode}: hub forwarded {run['hub_total_bytes'] / 1e6:.1f} MB")
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("hub branch-to-branch Mbit/s")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
