"""TCP throughput through one tunnel: plain veth vs our UserspaceEngine vs strongSwan kernel-libipsec.

Two containers from the node image (`vpnlab.image.ensure_image()`), `--network none`, joined by one
veth (wan0, 192.0.2.1 <-> 192.0.2.2). Each has a "LAN" address on lo (10.1.0.1 / 10.2.0.1: this kernel
has no dummy devices) and iperf3 runs between those two addresses, so all three cases use the same
endpoints in the same run:

  plain      routes 10.x via the veth, no encryption
  userspace  `python3 -m vpnlab_agent.dataplane.standalone` in both containers, hand-made AES-GCM-128 SAs
  userspace-nooffload  the same without merging received TCP segments into GSO packets on the TUN
  libipsec   strongSwan 5.9 charon-systemd + swanctl, kernel-libipsec (ESP in UDP on TUN ipsec0), AES-GCM-128

Containers keep the two charons' config, pid and vici paths apart (the reason for not using netns).
The agent code under test is this work tree's, bind-mounted over the image's copy.
CPU is the containers' cgroup CPU time during the run (iperf3 included), in cores.

    .venv/bin/python benchmarks/esp_throughput.py [--seconds 10] [--rounds 3] [--only plain,userspace,libipsec]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
AGENT_SRC = ROOT / "node-image" / "vpnlab_agent"
AGENT_DST = "/usr/lib/python3/dist-packages/vpnlab_agent"

sys.path.insert(0, str(ROOT / "node-image"))
sys.path.insert(0, str(ROOT / "orchestrator"))

from vpnlab.measure.labctl import tcp_listening  # noqa: E402
from vpnlab_agent.dataplane.standalone import sa_to_dict  # noqa: E402
from vpnlab_agent.sa import ChildSA, EspAlgorithm  # noqa: E402

A_WAN, B_WAN = "192.0.2.1", "192.0.2.2"
A_LAN, B_LAN = "10.1.0.1", "10.2.0.1"
PSK = "benchmark-only-psk-" + uuid.uuid4().hex

SWANCTL = """connections {{
  bench {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    encap = yes
    proposals = aes128gcm16-prfsha256-ecp256
    local {{
      auth = psk
      id = {me}
    }}
    remote {{
      auth = psk
      id = {peer}
    }}
    children {{
      net {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = aes128gcm16
        mode = tunnel
      }}
    }}
  }}
}}
secrets {{
  ike-bench {{
    id-a = rA
    id-b = rB
    secret = "{psk}"
  }}
}}
"""

LIBIPSEC_CONF = "kernel-libipsec {\n  load = yes\n}\n"


def run(*argv: str, timeout: float = 60, check: bool = True, input: str | None = None) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])}: {(r.stderr or r.stdout).strip()[:300]}")
    return r.stdout


@dataclass
class Node:
    name: str
    wan: str  # underlay address (routers) or "" (hosts)
    lan: str  # the address iperf3 binds to / the router's LAN address
    lan_net: str = ""  # what the peer routes here in the plain case
    cid: str = ""
    pid: int = 0

    def sh(self, cmd: str, timeout: float = 60, check: bool = True) -> str:
        return run("docker", "exec", self.cid, "sh", "-c", cmd, timeout=timeout, check=check)

    def write(self, path: str, text: str) -> None:
        run("docker", "exec", "-i", self.cid, "sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}", input=text)

    def cpu_seconds(self) -> float:
        """CPU time of everything in the container, from its cgroup (v1 cgroupfs or v2)."""
        cg = Path("/sys/fs/cgroup")
        for f in (cg / "cpuacct/docker" / self.cid / "cpuacct.usage", cg / "cpu,cpuacct/docker" / self.cid / "cpuacct.usage"):
            if f.exists():
                return int(f.read_text()) / 1e9
        for f in (cg / "docker" / self.cid / "cpu.stat", cg / f"system.slice/docker-{self.cid}.scope/cpu.stat"):
            if f.exists():
                for line in f.read_text().splitlines():
                    k, v = line.split()
                    if k == "usage_usec":
                        return int(v) / 1e6
        raise RuntimeError(f"cannot find the cgroup CPU usage of container {self.cid[:12]}")


class EngineProc:
    def __init__(self, node: Node) -> None:
        self.p = subprocess.Popen(["docker", "exec", "-i", node.cid, "python3", "-m", "vpnlab_agent.dataplane.standalone"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def call(self, **cmd: object) -> dict:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("engine process died")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        try:
            self.call(op="close")
        finally:
            self.p.wait(timeout=10)


@dataclass
class Bench:
    a: Node  # routers, tunnel endpoints
    b: Node
    src: Node  # iperf3 client and server: the routers themselves, or hosts behind them
    dst: Node
    nodes: list[Node]  # every container, for CPU accounting


def start(image: str, node: Node, tag: str) -> None:
    node.cid = run("docker", "run", "-d", "--rm", "--name", f"espbench-{tag}-{node.name}", "--network", "none",
                   "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--device", "/dev/net/tun",
                   "--sysctl", "net.ipv4.ip_forward=1",
                   "-v", f"{AGENT_SRC}:{AGENT_DST}:ro", "--label", "vpnlab.benchmark=esp",
                   image, "sleep", "infinity").strip()
    node.pid = int(run("docker", "inspect", "-f", "{{.State.Pid}}", node.cid).strip())
    node.sh("ip link set lo up")


def wire(a: Node, an: str, a_addr: str, b: Node, bn: str, b_addr: str) -> None:
    tmp = "eb" + uuid.uuid4().hex[:8]
    run("ip", "link", "add", tmp + "a", "type", "veth", "peer", "name", tmp + "b")
    run("ip", "link", "set", tmp + "a", "netns", str(a.pid))
    run("ip", "link", "set", tmp + "b", "netns", str(b.pid))
    for n, dev, name, addr in ((a, tmp + "a", an, a_addr), (b, tmp + "b", bn, b_addr)):
        n.sh(f"ip link set {dev} name {name} && ip addr add {addr} dev {name} && ip link set {name} up")


def build(image: str, tag: str, hosts: bool) -> Bench:
    """Routers rA, rB joined by wan0; in hosts mode each also has lan0 to a host container behind it."""
    if not hosts:  # iperf3 on the routers, LAN addresses on lo (no dummy devices on this kernel)
        a = Node("rA", A_WAN, A_LAN, f"{A_LAN}/32")
        b = Node("rB", B_WAN, B_LAN, f"{B_LAN}/32")
        bench = Bench(a, b, a, b, [a, b])
    else:
        a = Node("rA", A_WAN, A_LAN, "10.1.0.0/24")
        b = Node("rB", B_WAN, B_LAN, "10.2.0.0/24")
        ha, hb = Node("hA", "", "10.1.0.10"), Node("hB", "", "10.2.0.10")
        bench = Bench(a, b, ha, hb, [a, b, ha, hb])
    for n in bench.nodes:
        start(image, n, tag)
    wire(a, "wan0", f"{A_WAN}/24", b, "wan0", f"{B_WAN}/24")
    if not hosts:
        a.sh(f"ip addr add {A_LAN}/32 dev lo")
        b.sh(f"ip addr add {B_LAN}/32 dev lo")
    else:
        wire(bench.src, "eth0", "10.1.0.10/24", a, "lan0", f"{A_LAN}/24")
        wire(bench.dst, "eth0", "10.2.0.10/24", b, "lan0", f"{B_LAN}/24")
        bench.src.sh(f"ip route add default via {A_LAN}")
        bench.dst.sh(f"ip route add default via {B_LAN}")
    return bench


def iperf(bench: Bench, seconds: int) -> tuple[float, float, int]:
    """(Mbit/s received, CPU cores used by all containers, TCP retransmits)."""
    a, b = bench.src, bench.dst
    b.sh(f"iperf3 -s -1 -D -B {b.lan}")
    deadline = time.monotonic() + 10
    while not tcp_listening(b.sh("cat /proc/net/tcp"), 5201):  # the server listens: no guessed sleep
        if time.monotonic() > deadline:
            raise RuntimeError("iperf3 in the destination container does not listen on 5201")
        time.sleep(0.05)
    c0 = sum(n.cpu_seconds() for n in bench.nodes)
    t0 = time.monotonic()
    out = a.sh(f"iperf3 -c {b.lan} -B {a.lan} -t {seconds} -J", timeout=seconds + 30)
    dt = time.monotonic() - t0
    cpu = (sum(n.cpu_seconds() for n in bench.nodes) - c0) / dt
    j = json.loads(out)
    if os.environ.get("ESP_BENCH_DEBUG"):
        snd = j["end"]["streams"][0]["sender"]
        print({k: snd.get(k) for k in ("mean_rtt", "max_rtt", "max_snd_cwnd", "max_snd_wnd")})
    return (j["end"]["sum_received"]["bits_per_second"] / 1e6, cpu, j["end"]["sum_sent"].get("retransmits", 0))


def case_plain(bench: Bench, seconds: int) -> tuple[float, float, int]:
    a, b = bench.a, bench.b
    a.sh(f"ip route add {b.lan_net} via {b.wan} src {a.lan}")
    b.sh(f"ip route add {a.lan_net} via {a.wan} src {b.lan}")
    try:
        return iperf(bench, seconds)
    finally:
        a.sh(f"ip route del {b.lan_net}")
        b.sh(f"ip route del {a.lan_net}")


def sa_pair(alg: EspAlgorithm) -> tuple[ChildSA, ChildSA]:
    k_ab, k_ba = os.urandom(20), os.urandom(20)
    common = dict(algorithm=alg, integ_key_in=b"", integ_key_out=b"", local_port=4500, remote_port=4500)
    sa_a = ChildSA(name="rB", reqid=1, spi_in=0xB0000001, spi_out=0xA0000001, enc_key_in=k_ba, enc_key_out=k_ab,
                   local_addr=A_WAN, remote_addr=B_WAN, local_ts=("10.1.0.0/24",), remote_ts=("10.2.0.0/24",),
                   **common)
    sa_b = ChildSA(name="rA", reqid=1, spi_in=0xA0000001, spi_out=0xB0000001, enc_key_in=k_ab, enc_key_out=k_ba,
                   local_addr=B_WAN, remote_addr=A_WAN, local_ts=("10.2.0.0/24",), remote_ts=("10.1.0.0/24",),
                   **common)
    return sa_a, sa_b


def case_userspace(bench: Bench, seconds: int, offload: bool = True, tx_thread: bool = True) -> tuple[float, float, int]:
    a, b = bench.a, bench.b
    ea, eb = EngineProc(a), EngineProc(b)
    try:
        ea.call(op="open", local_addr=a.wan, route_src=a.lan, offload=offload, tx_thread=tx_thread)
        eb.call(op="open", local_addr=b.wan, route_src=b.lan, offload=offload, tx_thread=tx_thread)
        sa_a, sa_b = sa_pair(EspAlgorithm("aes-gcm-16", 128))
        ea.call(op="install", sa=sa_to_dict(sa_a))
        eb.call(op="install", sa=sa_to_dict(sa_b))
        result = iperf(bench, seconds)
        st = eb.call(op="status")["status"]
        if st["sas"][0]["packets_in"] < 1000:
            raise RuntimeError("the iperf3 traffic did not cross our tunnel")
        print(f"userspace engine (offload {offload}): crypto back end {st['crypto']}, mtu {st['mtu']}, drops "
              f"{ {k: v for k, v in st['drops'].items() if v} }, {st['sas'][0]['packets_in']} ESP packets in, "
              f"{st['tun_writes']} TUN writes, {ea.call(op='status')['status']['tso_reads']} TSO reads at rA")
        return result
    finally:
        for e in (ea, eb):
            e.close()


def case_libipsec(bench: Bench, seconds: int) -> tuple[float, float, int]:
    a, b = bench.a, bench.b
    for me, peer, n, p in (("rA", "rB", a, b), ("rB", "rA", b, a)):
        n.write("/etc/swanctl/conf.d/bench.conf",
                SWANCTL.format(local=n.wan, remote=p.wan, me=me, peer=peer, lts=n.lan.rsplit(".", 2)[0] + ".0.0/24",
                               rts=p.lan.rsplit(".", 2)[0] + ".0.0/24", psk=PSK))
        n.write("/etc/strongswan.d/charon/kernel-libipsec.conf", LIBIPSEC_CONF)
        n.sh("(/usr/sbin/charon-systemd > /tmp/charon.log 2>&1 &) ; sleep 0.2")
    for n in (a, b):
        for _ in range(50):
            if n.sh("swanctl --stats >/dev/null 2>&1 && echo up", check=False).strip() == "up":
                break
            time.sleep(0.2)
        n.sh("swanctl --load-all >/dev/null")
    a.sh("swanctl --initiate --child net --timeout 20 >/dev/null", timeout=40)
    sas = b.sh("swanctl --list-sas")
    if "INSTALLED" not in sas:
        raise RuntimeError("strongSwan child SA not installed: " + sas[:300])
    try:
        return iperf(bench, seconds)
    finally:
        for n in (a, b):
            n.sh("pkill -x charon-systemd; true", check=False)


def case_userspace_nooffload(bench: Bench, seconds: int) -> tuple[float, float, int]:
    return case_userspace(bench, seconds, offload=False)


def case_userspace_notx(bench: Bench, seconds: int) -> tuple[float, float, int]:
    return case_userspace(bench, seconds, tx_thread=False)


CASES = {"plain": case_plain, "userspace": case_userspace, "userspace-notx": case_userspace_notx,
         "userspace-nooffload": case_userspace_nooffload,
         "libipsec": case_libipsec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every case this many times, interleaved; the table shows medians (a shared, busy "
                         "machine makes single runs noisy)")
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--hosts", action="store_true",
                    help="iperf3 between two host containers behind the routers (forwarded, as in a lab) "
                         "instead of on the routers themselves")
    ap.add_argument("--image", help="node image tag (default: vpnlab.image.ensure_image())")
    args = ap.parse_args()
    console = Console(width=150)
    if os.geteuid() != 0:
        raise SystemExit("needs root (veth between containers)")
    image = args.image
    if not image:
        from vpnlab.image import ensure_image

        image = ensure_image()
    tag = uuid.uuid4().hex[:6]
    names = args.only.split(",")
    bench: Bench | None = None
    runs: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    loads = []
    try:
        bench = build(image, tag, args.hosts)
        for r in range(args.rounds):
            for name in names:
                loads.append(os.getloadavg()[0])
                runs[name].append(CASES[name](bench, args.seconds))
                console.print(f"round {r + 1} {name}: {runs[name][-1][0]:.0f} Mbit/s, "
                              f"{runs[name][-1][1]:.2f} cores, load avg {loads[-1]:.1f}")
    finally:
        run("sh", "-c", f"docker rm -f $(docker ps -aq --filter name=espbench-{tag}-) 2>/dev/null; true", check=False)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    results = {n: (med([x[0] for x in v]), med([x[1] for x in v]), int(med([x[2] for x in v])),
                   med([x[0] / x[1] for x in v if x[1]] or [0.0]), [x[0] for x in v]) for n, v in runs.items()}
    where = "host to host through the routers" if args.hosts else "router to router"
    t = Table(title=f"TCP through one tunnel, {where}: iperf3 {args.seconds} s, one stream, {args.rounds} round(s), medians; "
                    f"host load avg {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    for col in ("case", "Mbit/s", "vs libipsec", "vs plain veth", "CPU (cores)", "Mbit/s per core", "retransmits",
                "all runs (Mbit/s)"):
        t.add_column(col, justify="left" if col in ("case", "all runs (Mbit/s)") else "right")
    ref_lib = results["libipsec"][0] if "libipsec" in results else 0.0
    ref_plain = results["plain"][0] if "plain" in results else 0.0
    for name, (mbps, cpu, retr, per_core, alls) in results.items():
        t.add_row(name, f"{mbps:.0f}", f"{mbps / ref_lib:.2f}x" if ref_lib else "-",
                  f"{mbps / ref_plain:.3f}x" if ref_plain else "-", f"{cpu:.2f}", f"{per_core:.0f}", str(retr),
                  " ".join(f"{x:.0f}" for x in alls))
    console.print(t)


if __name__ == "__main__":
    main()
