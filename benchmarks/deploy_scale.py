"""Deploy and destroy a hub with N branches (two of them with a host, mesh off) and measure it.

    .venv/bin/python benchmarks/deploy_scale.py [--branches 20 100 200] [--auth psk cert] [--repeat 1] [--json]

One row per deploy: deploy time (until `deploy` returned), time until every tunnel was up (the
hub and every branch report an established IKE SA and a child SA with each peer), destroy time,
the agents' RSS (hub; branches max and mean) and USS (private memory, the image's shared pages
left out: what one more agent costs), and the hub agent's CPU time from its start until every
tunnel was up. A failed deploy is a row with its one-line error; the run goes on.

Where the time went, from the deploy's start until every tunnel was up: CPU seconds of the lab's
agents (all routers), of the container engine (dockerd, containerd, the shims and what they ran:
runc, docker-init), of this process (the orchestrator), and of everything else on the machine
(other people's work: on a shared 2-core machine this is what a deploy competes with), next to
the cores x wall-clock seconds the machine had.

Goals on a 2-core machine with 200 branches: deploy with every tunnel up <= 60 s, destroy <= 15 s,
branch agent RSS <= 30 MB, hub agent RSS <= 60 MB, and no failure in 10 deploys in a row.
The image is built (or found) before the clock starts: deploy time is the lab, not debootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vpnlab import lab as labs
from vpnlab.errors import VpnlabError
from vpnlab.image import ensure_image
from vpnlab.runtime.docker import DockerRuntime

GOALS = {"up_s": 60.0, "destroy_s": 15.0, "hub_rss_mb": 60.0, "branch_rss_max_mb": 30.0}
TUNNELS_TIMEOUT_S = 300.0
HZ = os.sysconf("SC_CLK_TCK")


def topology_yaml(branches: int, name: str, auth: str = "psk") -> str:
    """1 hub, `branches` branches; the first and the last have one host each (something to ping).
    auth cert: the lab CA and a certificate per router are made at deploy, inside the deploy time."""
    lines = [
        f"# deploy_scale.py: 1 hub + {branches} branches, mesh off",
        f"name: {name}",
        'secret: {psk: "vpnlab-bench-psk"}',
        f"defaults: {{auth: {auth}}}",
        "nodes:",
        "  hub:",
        "    role: hub",
    ]
    for i in range(1, branches + 1):
        lines += [f"  b{i}:", "    role: branch", "    hubs: [hub]"]
        if i in (1, branches):
            lines.append("    hosts: 1")
    return "\n".join(lines) + "\n"


def agent_pid(init_pid: int) -> int | None:
    """The python process under the container's init that runs vpnlab_agent."""
    pids, seen = [init_pid], set()
    while pids:
        pid = pids.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # argv[0] must be python: docker-init's own argv also names the agent command
            if Path(cmdline[0].decode()).name.startswith("python") and b"vpnlab_agent" in cmdline:
                return pid
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def uss_mb(pid: int) -> float:
    """Private (unshared) memory: what one more agent costs, the image's shared pages left out."""
    kb = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            kb += int(line.split()[1])
    return kb / 1024


def cpu_s(pid: int) -> float:
    """utime + stime of the process so far (the fields after the parenthesised name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


ENGINE = ("dockerd", "containerd", "containerd-shim", "docker-init", "runc")


def _proc_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds of it and its reaped children) for every process."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            f = stat.rsplit(")", 1)[1].split()
            out[int(p.name)] = (stat[stat.index("(") + 1:stat.rindex(")")], sum(int(x) for x in f[11:15]) / HZ)
    return out


def _busy_s() -> float:
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f) - f[3] - f[4]) / HZ  # all but idle and iowait


def cpu_split(before: dict[int, tuple[str, float]], busy_before: float, agents: set[int]) -> dict[str, float]:
    """CPU seconds since `before`: the agents, the container engine, this process, everything else."""
    split = {"agents_cpu_s": 0.0, "engine_cpu_s": 0.0, "vpnlab_cpu_s": 0.0}
    for pid, (name, cpu) in _proc_cpu().items():
        was = before.get(pid)
        used = cpu - (was[1] if was and was[0] == name else 0.0)
        if pid in agents:
            split["agents_cpu_s"] += used
        elif name.startswith(ENGINE):
            split["engine_cpu_s"] += used
        elif pid == os.getpid():
            split["vpnlab_cpu_s"] += used
    split["others_cpu_s"] = max(0.0, _busy_s() - busy_before - sum(split.values()))
    return {k: round(v, 1) for k, v in split.items()}


def tunnels_missing(statuses: dict[str, dict[str, Any]], hub: str) -> list[str]:
    """Branches without an established IKE SA and a child SA, seen from both ends."""
    def up_peers(st: dict[str, Any]) -> set[str]:
        ike = {s.get("peer") for s in st.get("ike_sas", []) if s.get("state") == "established"}
        return ike & {c.get("peer") for c in st.get("child_sas", [])}

    hub_up = up_peers(statuses.get(hub, {}))
    return sorted(b for b, st in statuses.items() if b != hub and (b not in hub_up or hub not in up_peers(st)))


def wait_tunnels(rt: DockerRuntime, lab: str, hub: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    infos = [c for c in rt.containers(lab) if c.kind != "host"]
    while True:
        statuses = {}
        for c in infos:
            try:
                statuses[c.node] = labs.agent_status(c)
            except Exception:
                statuses[c.node] = {}
        missing = tunnels_missing(statuses, hub)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} tunnels not up after {timeout:g} s: {', '.join(missing[:5])}")
        time.sleep(0.5)


def run_once(branches: int, name: str, workdir: Path, auth: str = "psk") -> dict[str, Any]:
    rt = DockerRuntime()
    path = workdir / f"{name}.yml"
    path.write_text(topology_yaml(branches, name, auth))
    labs.destroy(name, runtime=rt)  # a previous, interrupted run
    row: dict[str, Any] = {"branches": branches, "auth": auth}
    cpu_before, busy_before = _proc_cpu(), _busy_s()
    started = time.monotonic()
    try:
        try:
            labs.deploy(path, runtime=rt)
            row["deploy_s"] = round(time.monotonic() - started, 1)
            wait_tunnels(rt, name, "hub", TUNNELS_TIMEOUT_S)
            row["up_s"] = round(time.monotonic() - started, 1)
        except (VpnlabError, RuntimeError) as exc:
            row["error"] = str(exc).splitlines()[0][:200]
            return row
        pids = {c.node: agent_pid(c.pid) for c in rt.containers(name) if c.kind != "host"}
        row.update(cpu_split(cpu_before, busy_before, {p for p in pids.values() if p is not None}))
        row["machine_cpu_s"] = round((os.cpu_count() or 1) * row["up_s"], 1)  # cores x seconds until all up
        hub_pid = pids.pop("hub")
        if hub_pid is None or None in pids.values():
            row["error"] = "an agent process was not found"
            return row
        row["hub_cpu_s"] = round(cpu_s(hub_pid), 1)
        time.sleep(3.0)  # steady state (first DPDs, status polls done) before reading memory
        row["hub_rss_mb"] = round(rss_mb(hub_pid), 1)
        branch_rss = [rss_mb(p) for p in pids.values() if p is not None]
        row["branch_rss_max_mb"] = round(max(branch_rss), 1)
        row["branch_rss_mean_mb"] = round(statistics.mean(branch_rss), 1)
        row["hub_uss_mb"] = round(uss_mb(hub_pid), 1)
        row["branch_uss_mean_mb"] = round(statistics.mean(uss_mb(p) for p in pids.values() if p is not None), 1)
    finally:
        t = time.monotonic()
        labs.destroy(name, runtime=rt)
        row["destroy_s"] = round(time.monotonic() - t, 1)
        path.unlink(missing_ok=True)
    return row


COLUMNS = [
    ("branches", "branches", ""),
    ("auth", "auth", ""),
    ("deploy_s", "deploy", "s"),
    ("up_s", "all tunnels up", "s"),
    ("destroy_s", "destroy", "s"),
    ("hub_rss_mb", "hub RSS", "MB"),
    ("branch_rss_max_mb", "branch RSS max", "MB"),
    ("branch_rss_mean_mb", "branch RSS mean", "MB"),
    ("hub_uss_mb", "hub USS", "MB"),
    ("branch_uss_mean_mb", "branch USS mean", "MB"),
    ("hub_cpu_s", "hub CPU start-up", "s"),
    ("agents_cpu_s", "agents CPU", "s"),
    ("engine_cpu_s", "Docker CPU", "s"),
    ("vpnlab_cpu_s", "vpnlab CPU", "s"),
    ("others_cpu_s", "others' CPU", "s"),
    ("machine_cpu_s", "machine had", "s"),
]


def render(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="deploy_scale: 1 hub + N branches (2 hosts, mesh off)", title_justify="left")
    for _, header, unit in COLUMNS:
        table.add_column(f"{header} ({unit})" if unit else header, justify="right")
    table.add_column("error")
    for row in rows:
        cells = []
        for key, _, _ in COLUMNS:
            value = row.get(key)
            text = "-" if value is None else str(value)
            if key in GOALS and value is not None and row["branches"] >= 200 and value > GOALS[key]:
                text = f"[red]{text}[/]"
            cells.append(text)
        table.add_row(*cells, f"[red]{row['error']}[/]" if row.get("error") else "")
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, nargs="+", default=[20, 100, 200], help="lab sizes to deploy")
    parser.add_argument("--auth", nargs="+", default=["psk"], choices=["psk", "cert"], help="auth methods to deploy with")
    parser.add_argument("--repeat", type=int, default=1, help="deploys per size (10 for the in-a-row goal)")
    parser.add_argument("--name", default="bench", help="lab name prefix (the size is appended)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    ensure_image()
    rows = []
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="vpnlab-bench-") as tmp:
        for n in args.branches:
            for auth in args.auth:
                for i in range(args.repeat):
                    row = run_once(n, f"{args.name}{n}", Path(tmp), auth)
                    console.print(f"{n} branches, {auth}, run {i + 1}/{args.repeat}: {row}", markup=False)
                    rows.append(row)
    failures = sum(1 for r in rows if r.get("error"))
    if args.json:
        print(json.dumps({"rows": rows, "goals": GOALS, "failures": failures}, indent=2))
    else:
        Console(width=240).print(render(rows))
        print(f"{len(rows) - failures} of {len(rows)} deploys with every tunnel up; goals at 200 branches: "
              + ", ".join(f"{k} <= {v:g}" for k, v in GOALS.items()))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
