"""Deploy and destroy a 41-node lab (1 hub + 20 branches + 20 hosts) and read every agent's RSS.

    .venv/bin/python benchmarks/deploy_scale.py [--topology topologies/bench-20.yml] [--json]

Goals on a 2-core machine: deploy <= 60 s, destroy <= 15 s, agent RSS <= 40 MB (max and mean).
The image is built (or found) before the clock starts: deploy time is the lab, not debootstrap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnlab import lab as labs
from vpnlab.image import ensure_image
from vpnlab.runtime.docker import DockerRuntime

REPO = Path(__file__).resolve().parents[1]
GOALS = {"deploy_s": 60.0, "destroy_s": 15.0, "agent_rss_max_mb": 40.0, "agent_rss_mean_mb": 40.0}


def agent_memory_mb(init_pid: int) -> tuple[float, float] | None:
    """(VmRSS, Pss) of the agent: the python process under the container's init running
    vpnlab_agent. Pss splits pages shared between the 21 agents (libpython, libcrypto, the
    image's files), so it says what each agent really adds; the goal is on RSS."""
    pids = [init_pid]
    seen = set()
    while pids:
        pid = pids.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # argv[0] must be python: docker-init's own argv also names the agent command
            if Path(cmdline[0].decode()).name.startswith("python") and b"vpnlab_agent" in cmdline:
                return _kb(f"/proc/{pid}/status", "VmRSS:") / 1024, _kb(f"/proc/{pid}/smaps_rollup", "Pss:") / 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def _kb(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in {path}")


def run(topology: Path, settle_s: float) -> dict[str, float | int]:
    runtime = DockerRuntime()
    ensure_image()
    lab = labs.load_lab(topology)
    labs.destroy(lab.name, runtime=runtime)  # a previous, interrupted run
    started = time.monotonic()
    try:
        labs.deploy(topology, runtime=runtime)
        deploy_s = time.monotonic() - started
        time.sleep(settle_s)  # let agents reach their steady state before reading memory
        rss, pss = [], []
        for c in runtime.containers(lab.name):
            if c.kind != "host":
                value = agent_memory_mb(c.pid)
                if value is None:
                    raise RuntimeError(f"no agent process found in {c.name}")
                rss.append(value[0])
                pss.append(value[1])
    finally:
        started_destroy = time.monotonic()
        labs.destroy(lab.name, runtime=runtime)
        destroy_s = time.monotonic() - started_destroy
    return {
        "nodes": len(lab.nodes),
        "routers": len(lab.routers),
        "deploy_s": round(deploy_s, 2),
        "destroy_s": round(destroy_s, 2),
        "agent_rss_max_mb": round(max(rss), 1),
        "agent_rss_mean_mb": round(statistics.mean(rss), 1),
        "agent_pss_mean_mb": round(statistics.mean(pss), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", type=Path, default=REPO / "topologies" / "bench-20.yml")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between ready and reading RSS")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.topology, args.settle)
    if args.json:
        print(json.dumps({"figures": figures, "goals": GOALS}, indent=2))
        return 0
    table = Table("metric", "value", "goal", "met", title=f"{args.topology.name}: {figures['nodes']} nodes")
    units = {"deploy_s": "s", "destroy_s": "s", "agent_rss_max_mb": "MB", "agent_rss_mean_mb": "MB"}
    for key, goal in GOALS.items():
        value = figures[key]
        table.add_row(key, f"{value} {units[key]}", f"<= {goal:g} {units[key]}", "yes" if value <= goal else "[red]no[/]")
    table.add_row("agent_pss_mean_mb", f"{figures['agent_pss_mean_mb']} MB", "(shared pages split)", "")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
