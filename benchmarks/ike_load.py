"""100 initiators connect at once to one hub (issue #3 item 8c): goal all child SAs up within 10 s.

    .venv/bin/python benchmarks/ike_load.py [--count 100] [--runs 3] [--json]

`--count 300` pushes the hub past its cookie threshold (50 half-open SAs) and makes initiators
retransmit: the table then shows retransmitted IKE_SA_INITs next to the authentication failures
and half-open SAs left at the hub, which must stay 0 (issue #14: PSK mismatches under load).

The hub is the agent's IKE service (`python -m vpnlab_agent.io.ike_serve`: IkeService + the
userspace ESP engine, which installs every child SA and its route) in one network namespace, with
`count` peers configured. The load generator is built on the agent's own IKE code: `count`
IkeEndpoints, each with its own identity, its own address and its own UDP 500/4500 sockets, all
in one asyncio process in a second namespace. The clock starts when all of them call connect()
and stops when every initiator has its child SA and the hub reports `count` child SAs.
Needs root (namespaces, TUN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HUB = "198.51.100.1"
NON_ESP_MARKER = b"\x00\x00\x00\x00"
GOAL_S = 10.0


def branch_addr(i: int) -> str:
    # Up to 240 in the hub's own /24, the rest in a second documentation range reached on-link.
    return f"198.51.100.{10 + i}" if i < 240 else f"203.0.113.{i - 239}"


def branch_lan(i: int) -> str:
    return f"10.{1 + i // 200}.{i % 200}.0/24"


# --- the load generator (runs inside the initiators' namespace) --------------------------------


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, driver: Driver, port: int) -> None:
        self.driver, self.port = driver, port

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self.driver.on_datagram(data, addr, self.port)


class Driver:
    """One IkeEndpoint on its own sockets: the same adapter pattern as IkeService, minus the engine."""

    def __init__(self, endpoint, loop: asyncio.AbstractEventLoop, done: dict) -> None:  # noqa: ANN001
        self.ep, self.loop, self.done = endpoint, loop, done
        self.socks: dict[int, asyncio.DatagramTransport] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.inits_sent = 0
        self.inits_seen: set[bytes] = set()
        self.inits_repeated = 0

    async def open(self) -> None:
        for port in (500, 4500):
            t, _ = await self.loop.create_datagram_endpoint(lambda p=port: _Proto(self, p),
                                                            local_addr=(self.ep.local_addr, port))
            self.socks[port] = t  # type: ignore[assignment]

    def on_datagram(self, data: bytes, addr: tuple[str, int], port: int) -> None:
        if port == 4500:
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP: no data plane in the generator
            data = data[4:]
        self.ep.receive_datagram(data, addr, port, self.loop.time())
        self.flush()

    def on_timer(self) -> None:
        self.timer = None
        self.ep.handle_timer(self.loop.time())
        self.flush()

    def flush(self) -> None:
        from vpnlab_agent.ike.events import ChildSAUp, IkeSADown

        for data, addr, port in self.ep.datagrams_to_send(self.loop.time()):
            if data[18] == 34:  # exchange type byte: IKE_SA_INIT
                self.inits_sent += 1
                self.inits_repeated += data in self.inits_seen
                self.inits_seen.add(data)
            self.socks[port].sendto(NON_ESP_MARKER + data if port == 4500 else data, addr)
        while (ev := self.ep.next_event()) is not None:
            if isinstance(ev, ChildSAUp):
                self.done[self.ep.local_addr] = time.perf_counter()
            elif isinstance(ev, IkeSADown) and not self.done.get("stopping"):
                self.done.setdefault("failed", []).append(f"{self.ep.local_addr}: {ev.reason}")
        if self.timer is not None:
            self.timer.cancel()
        t = self.ep.get_timer()
        self.timer = self.loop.call_at(t, self.on_timer) if t is not None else None


async def generate(count: int, timeout: float) -> None:
    from vpnlab_agent.config import IkeConfig, PeerConfig
    from vpnlab_agent.ike.endpoint import IkeEndpoint

    loop = asyncio.get_running_loop()
    done: dict = {}
    drivers = []
    for i in range(count):
        cfg = IkeConfig(local_id=f"br{i:03d}", psk="load-psk",
                        peers=(PeerConfig("hub", "hub", HUB, True, (branch_lan(i),), ("10.0.0.0/24",)),))
        d = Driver(IkeEndpoint(cfg, branch_addr(i), force_encap=True), loop, done)
        await d.open()
        drivers.append(d)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # the parent says go
    t0 = time.perf_counter()
    for d in drivers:
        d.ep.connect("hub", loop.time())
        d.flush()
    while sum(1 for k in done if k not in ("failed", "stopping")) < count and time.perf_counter() - t0 < timeout:
        await asyncio.sleep(0.005)
    times = sorted(v - t0 for k, v in done.items() if k not in ("failed", "stopping"))
    result = {"up": len(times), "all_up_s": times[-1] if len(times) == count else None,
            "median_s": statistics.median(times) if times else None,
            "inits_sent": sum(d.inits_sent for d in drivers),
            "inits_retransmitted": sum(d.inits_repeated for d in drivers), "failed": done.get("failed", [])}
    print(json.dumps(result), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the parent has checked the hub: stop
    done["stopping"] = True
    for d in drivers:
        d.ep.terminate_all(loop.time())
        d.flush()
    await asyncio.sleep(0.3)  # let the DELETEs go out


# --- the parent: namespaces, hub, generator ----------------------------------------------------


def sh(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def hub_config(count: int):  # noqa: ANN201
    from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig

    peers = tuple(PeerConfig(f"br{i:03d}", f"br{i:03d}", None, False, ("10.0.0.0/24",), (branch_lan(i),))
                  for i in range(count))
    return NodeConfig(lab="load", name="hub", role="hub", implementation="agent", public_address=HUB,
                      interfaces=(InterfaceConfig("wan0", "wan", (f"{HUB}/24",)),),
                      ike=IkeConfig(local_id="hub", psk="load-psk", peers=peers, dpd_interval_s=60))


class Proc:
    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)

    def send(self, obj: object) -> None:
        assert self.p.stdin
        self.p.stdin.write((json.dumps(obj) if not isinstance(obj, str) else obj) + "\n")
        self.p.stdin.flush()

    def read(self) -> dict:
        assert self.p.stdout
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.p.args[5:7]} exited with {self.p.wait()}")
        return json.loads(line)


def run_once(count: int, tmp: Path) -> dict:
    tag = uuid.uuid4().hex[:6]
    nh, ng = f"ikl{tag}-hub", f"ikl{tag}-gen"
    hub = gen = None
    try:
        for ns in (nh, ng):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", f"l{tag}h", "type", "veth", "peer", "name", f"l{tag}g")
        sh("ip", "link", "set", f"l{tag}h", "netns", nh)
        sh("ip", "link", "set", f"l{tag}g", "netns", ng)
        sh("ip", "netns", "exec", nh, "ip", "addr", "add", f"{HUB}/24", "dev", f"l{tag}h")
        sh("ip", "netns", "exec", nh, "ip", "addr", "add", "10.0.0.1/24", "dev", "lo")
        sh("ip", "netns", "exec", nh, "ip", "link", "set", f"l{tag}h", "up")
        sh("ip", "netns", "exec", nh, "ip", "route", "add", "203.0.113.0/24", "dev", f"l{tag}h")
        if count > 240 + 254:
            raise SystemExit(f"--count {count}: at most {240 + 254} initiators fit the address plan")
        batch = "".join(f"addr add {branch_addr(i)}/24 dev l{tag}g\n" for i in range(count))
        (tmp / "addrs").write_text(batch)
        sh("ip", "-n", ng, "-batch", str(tmp / "addrs"))
        sh("ip", "netns", "exec", ng, "ip", "link", "set", f"l{tag}g", "up")
        cfg = tmp / "hub.json"
        cfg.write_text(hub_config(count).to_json())
        hub = Proc(["ip", "netns", "exec", nh, sys.executable, "-m", "vpnlab_agent.io.ike_serve", str(cfg),
                    "--route-src", "10.0.0.1"])
        assert hub.read().get("started")
        gen = Proc(["ip", "netns", "exec", ng, sys.executable, __file__, "--generator", "--count", str(count)])
        assert gen.read().get("ready")
        time.sleep(0.5)  # duplicate address detection etc. settle
        t0 = time.perf_counter()
        gen.send("go")
        hub_all = None
        while time.perf_counter() - t0 < GOAL_S * 3:
            hub.send({"op": "status"})
            st = hub.read()["status"]
            hub_children = len(st["child_sas"])
            if hub_children >= count:
                hub_all = time.perf_counter() - t0
                break
            time.sleep(0.05)
        result = gen.read()
        result["hub_all_children_s"] = hub_all
        result["hub_children"] = hub_children
        result["hub_ike_sas"] = len(st["ike_sas"])
        hub.send({"op": "status"})
        st = hub.read()["status"]
        result["hub_errors"] = st["errors"][:3]
        result["hub_auth_failures"] = sum("authentication failed" in e for e in st["errors"])
        result["hub_half_open"] = st["half_open"]
        return result
    finally:
        for proc in (gen, hub):
            if proc is not None:
                try:
                    proc.send({"op": "stop"})
                    proc.p.wait(timeout=10)
                except Exception:  # noqa: BLE001
                    proc.p.kill()
                    proc.p.wait()
        for ns in (nh, ng):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--generator", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generator:
        asyncio.run(generate(args.count, GOAL_S * 3))
        return 0
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("skipped: needs root, network namespaces and /dev/net/tun")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for _ in range(args.runs):
            results.append(run_once(args.count, Path(tmpdir)))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{args.count} initiators at once against one hub (goal: all child SAs up <= {GOAL_S:.0f} s)")
    for col in ("run", "children up", "all up (initiators) s", "all up (hub) s", "median s", "IKE_SA_INIT sent",
                "of them retransmitted", "auth failures", "half-open left", "goal"):
        t.add_column(col)
    for i, r in enumerate(results, 1):
        worst = max(x for x in (r["all_up_s"], r["hub_all_children_s"]) if x is not None) \
            if r["all_up_s"] is not None and r["hub_all_children_s"] is not None else None
        t.add_row(str(i), f"{r['up']}/{args.count}", f"{r['all_up_s']:.2f}" if r["all_up_s"] else "-",
                  f"{r['hub_all_children_s']:.2f}" if r["hub_all_children_s"] else "-",
                  f"{r['median_s']:.2f}" if r["median_s"] else "-", str(r["inits_sent"]),
                  str(r["inits_retransmitted"]), str(r["hub_auth_failures"]), str(r["hub_half_open"]),
                  "ok" if worst is not None and worst <= GOAL_S and not r["hub_auth_failures"] else "MISSED")
    console = Console(width=130)
    console.print(t)
    for r in results:
        for line in r["failed"][:3] + r["hub_errors"]:
            console.print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
