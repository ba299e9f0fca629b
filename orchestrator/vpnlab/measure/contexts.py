"""`vpnlab measure contexts`: one topology deployed with each context method in turn, side by side.

For each method (hsvpn, tunnel-in-tunnel, per-network) it deploys a copy of the lab, then measures:
- SA counts in the running lab (IKE SAs, child SAs, inner tunnels) next to the seed's formulas;
- per-packet overhead (underlay bytes per inner packet, from a capture) and the largest inner packet
  that passes with DF set (a ping sweep, not a computation);
- TCP throughput per context and in total, every context at once (iperf3, first branch -> hub);
- time until every context of every site works after deploy, and after one site's uplink went
  down (longer than DPD) and up again;
- rekey load: rekeys per hour at the configured lifetimes, and the IKE messages, bytes and agent
  CPU time it takes to rekey every child SA of the lab at once.
Results are plain dicts (JSON-ready); cli.py prints them, `plot` draws one panel per figure.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.base import Runtime
from vpnlab.topology.model import Lab, Node

METHODS = ("hsvpn", "tunnel-in-tunnel", "per-network")
SHORT = {"hsvpn": "h", "tunnel-in-tunnel": "t", "per-network": "p"}
PING_SIZE = 1000  # ICMP payload of the overhead probe: inner IPv4 packet of 1028 bytes


def formulas(sites: int, contexts: int) -> dict[str, dict[str, int]]:
    """The seed's tunnel counts for a star of `sites` branch tunnels and `contexts` contexts."""
    return {
        "hsvpn": {"ike_sas": sites, "child_sas": sites, "inner_tunnels": 0},
        "tunnel-in-tunnel": {"ike_sas": sites, "child_sas": sites, "inner_tunnels": sites * contexts},
        "per-network": {"ike_sas": sites * contexts, "child_sas": sites * contexts, "inner_tunnels": 0},
    }


def first_hosts(lab: Lab) -> dict[tuple[str, str], Node]:
    """(router, context) -> the first host in that context."""
    out: dict[tuple[str, str], Node] = {}
    for n in lab.hosts:
        if n.context and n.router:
            out.setdefault((n.router, n.context), n)
    return out


class _Run:
    def __init__(self, lab: Lab, ctl: LabCtl, say: Callable[[str], None]) -> None:
        self.lab, self.ctl, self.say = lab, ctl, say
        self.hosts = first_hosts(lab)
        self.hub = next(r for r in lab.routers if r.role in ("hub", "gateway"))
        self.branches = [r for r in lab.routers if r.role == "branch" and r.contexts]
        self.contexts = [c.name for c in self.hub.contexts]

    def addr(self, router: str, context: str) -> str:
        return str(self.hosts[(router, context)].interfaces[0].address.ip)

    def pairs(self, branches: list[Node] | None = None) -> list[tuple[str, str, str, tuple[str, ...]]]:
        """(context, node, destination, extra ping options) for every context of every branch: from
        the branch's first host in the context to the hub's, or, where a context has no hosts, from
        the branch router itself to the hub router's address in the context (marked with the
        context's table, so it is routed there, with the router's own address in it as source)."""
        out = []
        hub_ctx = {c.name: c for c in self.hub.contexts}
        for b in branches or self.branches:
            for c in b.contexts:
                if (b.name, c.name) in self.hosts and (self.hub.name, c.name) in self.hosts:
                    out.append((c.name, self.hosts[(b.name, c.name)].name, self.addr(self.hub.name, c.name), ()))
                elif c.name in hub_ctx:
                    own = str(c.lans[0].network_address + 1)
                    dst = str(hub_ctx[c.name].lans[0].network_address + 1)
                    out.append((c.name, b.name, dst, ("-m", str(c.table), "-I", own)))
        return out

    def ping_ok(self, node: str, dst: str, extra: tuple[str, ...] = ()) -> bool:
        code, out = self.ctl.run(node, ["ping", "-n", "-c", "1", "-W", "1", *extra, dst])
        return code == 0 and "bytes from" in out

    def all_work(self, pairs: list[tuple[str, str, str, tuple[str, ...]]], timeout: float) -> float:
        """Seconds until every pair answered (each pair polled until it does)."""
        t0 = time.monotonic()
        for ctx, node, dst, extra in pairs:
            wait_for(f"{ctx} {node} -> {dst}", lambda: self.ping_ok(node, dst, extra), timeout, interval=0.05)
        return time.monotonic() - t0

    # ---- counts ------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        ike: set[tuple[Any, ...]] = set()
        child: set[tuple[Any, ...]] = set()
        inner = 0
        for r in self.lab.routers:
            st = self.ctl.status(r.name)
            for s in st["ike_sas"]:
                if s.get("state") == "established":
                    ike.add(tuple(sorted((str(s.get("spi_i")), str(s.get("spi_r"))))))
            for c in st["child_sas"]:
                child.add(tuple(sorted((str(c["spi_in"]), str(c["spi_out"])))))
            if r.name == self.hub.name:
                ctx = st["services"].get("contexts", {})
                if ctx.get("method") == "tunnel-in-tunnel":
                    inner = sum(len(c["peers"]) for c in ctx.get("contexts", []))
        return {"ike_sas": len(ike), "child_sas": len(child), "inner_tunnels": inner}

    # ---- MTU and overhead ----------------------------------------------------------------------

    def df_sweep(self, host: str, dst: str) -> int:
        """The largest inner IPv4 packet (bytes) that passes with DF set, by bisection."""
        lo, hi = 100, 1500 - 28
        if not self._df(host, dst, lo):
            return 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._df(host, dst, mid):
                lo = mid
            else:
                hi = mid - 1
        return lo + 28  # ICMP payload + ICMP 8 + IPv4 20

    def _df(self, host: str, dst: str, size: int) -> bool:
        for _ in range(2):  # a first packet may only teach the path MTU
            code, out = self.ctl.run(host, ["ping", "-n", "-M", "do", "-c", "1", "-W", "1", "-s", str(size), dst])
            if code == 0 and "bytes from" in out:
                return True
            if "message too long" in out or "mtu" in out.lower():
                return False
        return False

    def overhead(self, host: str, dst: str, src_router: Node) -> float | None:
        """Underlay IPv4 bytes per inner IPv4 packet of PING_SIZE + 28 bytes, minus that inner size."""
        wan = str(src_router.public_address or src_router.interfaces[0].address.ip)
        with _Capture(self.ctl.lab, f"src host {wan} and udp port 4500 and greater 900") as cap:
            self.ctl.run(host, ["ping", "-n", "-c", "10", "-i", "0.05", "-s", str(PING_SIZE), dst])
        sizes = cap.ip_lengths()
        if not sizes:
            return None
        return min(sizes) - (PING_SIZE + 28)

    # ---- throughput -----------------------------------------------------------------------------

    def throughput(self, branch: Node, duration: float) -> dict[str, float]:
        flows = [(c, h, d) for c, h, d, extra in self.pairs([branch]) if not extra]
        port = 5301
        for i, (ctx, _, _) in enumerate(flows):
            self.ctl.run(self.hosts[(self.hub.name, ctx)].name, ["iperf3", "-s", "-D", "-1", "-p", str(port + i)])
        time.sleep(0.5)
        results: dict[str, float] = {}

        def client(i: int, ctx: str, host: str, dst: str) -> None:
            _, out = self.ctl.run(host, ["iperf3", "-J", "-c", dst, "-p", str(port + i), "-t", f"{duration:g}"])
            try:
                results[ctx] = json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError):
                self.say(f"iperf3 in {ctx} failed: {out.strip()[-200:]}")
                results[ctx] = 0.0

        threads = [threading.Thread(target=client, args=(i, *f)) for i, f in enumerate(flows)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    # ---- uplink outage -----------------------------------------------------------------------

    def outage(self, branch: Node, down_s: float, timeout: float) -> float:
        self.ctl.run(branch.name, ["ip", "link", "set", "wan0", "down"])
        time.sleep(down_s)
        self.ctl.run(branch.name, ["ip", "link", "set", "wan0", "up"])
        return self.all_work(self.pairs([branch]), timeout)

    # ---- rekey load ------------------------------------------------------------------------------

    def rekey_load(self, timeout: float, ike: bool = False) -> dict[str, Any]:
        """Rekey every child SA (or, ike, every IKE SA) of the lab at once: IKE messages and bytes on
        the underlay, the agents' CPU time, and how long until every branch holds only new SAs."""
        def cpu() -> float:
            """CPU seconds the routers' agents (every thread) have used, from schedstat (ns). PID 1 is
            docker-init, not the agent: find the agent by its command line (anchored, so the shell
            running pgrep does not match)."""
            total = 0
            read = 'cat /proc/"$(pgrep -o -f "^python3 -m vpnlab_agent")"/task/*/schedstat'
            for r in self.lab.routers:
                _, out = self.ctl.run(r.name, ["sh", "-c", read])
                total += sum(int(line.split()[0]) for line in out.splitlines() if line.strip())
            return total / 1e9

        def spis(node: str) -> set[str]:
            st = self.ctl.status(node)
            if ike:
                return {f"{s['spi_i']}{s['spi_r']}" for s in st["ike_sas"] if s.get("state") == "established"}
            return {str(c["spi_in"]) for c in st["child_sas"]}

        before = {r.name: spis(r.name) for r in self.branches}
        peers = {b.name: [p["name"] for p in json.loads(self.ctl.run(b.name, ["cat", "/etc/vpnlab/node.json"])[1])
                          ["ike"]["peers"]] for b in self.branches}
        ike_filter = "udp and (port 500 or (port 4500 and udp[8:4] = 0))"
        cpu0 = cpu()
        t0 = time.monotonic()
        with _Capture(self.ctl.lab, ike_filter) as cap:
            def rekey_all(branch: str) -> None:
                script = rekey_script(peers[branch], ike)
                self.ctl.run(branch, ["sh", "-c", script])

            threads = [threading.Thread(target=rekey_all, args=(b.name,)) for b in self.branches]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

            def rekeyed() -> bool:
                for b in self.branches:
                    now = spis(b.name)
                    if len(now) < len(before[b.name]) or not now.isdisjoint(before[b.name]):
                        return False
                return True

            wait_for(f"every {'IKE' if ike else 'child'} SA rekeyed", rekeyed, timeout)
            seconds = time.monotonic() - t0
        cpu_s = cpu() - cpu0
        sizes = cap.ip_lengths()
        return {"messages": len(sizes), "bytes": sum(sizes), "agent_cpu_s": round(cpu_s, 4), "seconds": round(seconds, 3)}


def rekey_script(peers: list[str], ike: bool) -> str:
    """One shell line that asks the agent to rekey with every peer at once, then waits for all
    (`cmd &; wait` is a syntax error in sh: the background commands are joined by spaces)."""
    return " ".join(f"python3 -m vpnlab_agent ctl rekey {p}{' --ike' if ike else ''} >/dev/null &" for p in peers) + " wait"


class _Capture:
    """tcpdump on the lab's underlay bridge; IPv4 lengths of what it saw."""

    def __init__(self, lab: str, bpf: str) -> None:
        self.lab, self.bpf = lab, bpf
        self.dir = tempfile.mkdtemp(prefix="vpnlab-ctx-")
        self.path = os.path.join(self.dir, "inet.pcap")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _Capture:
        argv = ["ip", "netns", "exec", f"vpnlab-{self.lab}", "tcpdump", "--immediate-mode", "-U", "-s", "96",
                "-i", "inet", "-w", self.path, self.bpf]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        if "listening on" not in line:
            raise LabError(f"tcpdump on the underlay did not start: {line.strip()}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def ip_lengths(self) -> list[int]:
        """IPv4 total length of every captured frame (pcap, Ethernet)."""
        out: list[int] = []
        try:
            raw = Path(self.path).read_bytes()
        finally:
            for f in (self.path,):
                if os.path.exists(f):
                    os.unlink(f)
            os.rmdir(self.dir)
        pos = 24
        while pos + 16 <= len(raw):
            incl = struct.unpack_from("<I", raw, pos + 8)[0]
            frame = raw[pos + 16:pos + 16 + incl]
            if len(frame) >= 18 and frame[12:14] == b"\x08\x00":
                out.append(struct.unpack_from("!H", frame, 16)[0])
            pos += 16 + incl
        return out


def measure_contexts(
    topology: str | Path,
    *,
    methods: tuple[str, ...] = METHODS,
    duration: float = 5.0,
    outage_s: float = 30.0,
    quick: bool = False,
    runtime: Runtime | None = None,
    say: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """quick: only SA counts, setup time and rekey load (a lab without hosts, benchmarks/contexts_methods.py)."""
    from vpnlab.runtime.docker import DockerRuntime
    from vpnlab.topology.loader import read_yaml

    rt = runtime or DockerRuntime()
    data = read_yaml(topology)
    result: dict[str, Any] = {"topology": str(topology), "runs": {}}
    for method in methods:
        result["runs"][method] = _one(topology, data, method, duration, outage_s, quick, rt, say)
    first = next(iter(result["runs"].values()))
    result["sites"], result["contexts"] = first["sites"], first["contexts"]
    result["formulas"] = formulas(first["sites"], first["contexts"])
    return result


def _one(topology: str | Path, data: dict[str, Any], method: str, duration: float, outage_s: float,
         quick: bool, rt: Runtime, say: Callable[[str], None]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="vpnlab-ctx-"))
    copy = tmp / Path(topology).name
    copy.write_text(yaml.safe_dump({**data, "context_method": method}, sort_keys=False))
    name = f"{str(data.get('name', 'ctx'))[:10]}-{SHORT[method]}"
    lab = labs.load_lab(copy, name)
    say(f"{method}: deploying {name}")
    t0 = time.monotonic()
    try:
        labs.deploy(copy, name=name, runtime=rt)
        deployed = time.monotonic() - t0
        run = _Run(lab, LabCtl(rt, name), say)
        all_up = run.all_work(run.pairs(), 60) + deployed
        say(f"{method}: every context works {all_up:.1f} s after deploy started")
        counts = run.counts()
        cfg = json.loads(run.ctl.run(run.branches[0].name, ["cat", "/etc/vpnlab/node.json"])[1])["ike"]
        per_hour = counts["child_sas"] * 3600 / cfg["child_lifetime_s"] + counts["ike_sas"] * 3600 / cfg["ike_lifetime_s"]
        common = {
            "method": method, "sites": len(run.branches), "contexts": len(run.contexts), "counts": counts,
            "deploy_s": round(deployed, 2), "all_up_s": round(all_up, 2), "rekeys_per_hour": round(per_hour, 1),
        }
        if quick:
            say(f"{method}: rekeying every child SA")
            return {**common, "rekey_all": run.rekey_load(120), "rekey_ike_all": run.rekey_load(120, ike=True)}
        b = run.branches[0]
        ctx0 = run.contexts[0]
        host, dst = run.hosts[(b.name, ctx0)].name, run.addr(run.hub.name, ctx0)
        mtu = run.df_sweep(host, dst)
        overhead = run.overhead(host, dst, b)
        say(f"{method}: largest inner packet {mtu} B, overhead {overhead} B; throughput ...")
        tput = run.throughput(b, duration)
        say(f"{method}: uplink of {b.name} down {outage_s:g} s")
        recovery = run.outage(b, outage_s, 120)
        say(f"{method}: rekeying every child SA")
        rekey = run.rekey_load(60)
        rekey_ike = run.rekey_load(60, ike=True)
        return {
            **common, "mtu_inner": mtu, "overhead_bytes": overhead,
            "throughput_mbps": tput, "throughput_total_mbps": round(sum(tput.values()), 1),
            "recovery_s": round(recovery, 2), "outage_s": outage_s, "rekey_all": rekey, "rekey_ike_all": rekey_ike,
        }
    finally:
        labs.destroy(name, runtime=rt)
        copy.unlink()
        tmp.rmdir()


def plot(result: dict[str, Any], path: str | Path) -> None:
    """One panel per figure, the methods side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    names = list(runs)
    panels = [
        ("child SAs", lambda r: r["counts"]["child_sas"]),
        ("IKE SAs", lambda r: r["counts"]["ike_sas"]),
        ("largest inner packet (B)", lambda r: r["mtu_inner"]),
        ("overhead per packet (B)", lambda r: r["overhead_bytes"] or 0),
        ("TCP Mbit/s, all contexts", lambda r: r["throughput_total_mbps"]),
        ("s until all contexts up", lambda r: r["all_up_s"]),
        ("s to recover an uplink", lambda r: r["recovery_s"]),
        ("IKE bytes to rekey all", lambda r: r["rekey_all"]["bytes"]),
        ("agent CPU s to rekey all", lambda r: r["rekey_all"]["agent_cpu_s"]),
    ]
    fig, axes = plt.subplots(3, 3, figsize=(13, 9))
    for ax, (title, get) in zip(axes.flat, panels):
        values = [get(runs[m]) for m in names]
        ax.bar(names, values, color=["#2b7", "#e93", "#37c"][: len(names)])
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:g}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
