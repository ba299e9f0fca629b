"""Runs inside user-mode Linux (see test_xfrm_contexts_uml.py): a planned per-network lab, hub and
two branches, every router the real agent process on the kernel XFRM engine.

The topology below goes through the orchestrator's loader and planner and `build_node_config`, as
`vpnlab deploy` does; the wiring is the fabric's (one netns per node, one bridge per segment in a
fabric netns, a veth per interface) and each router runs `python -m vpnlab_agent run` with the
sysctls the router kind sets. Contexts corp and guest (the same addresses at every site), voice
(hub and br1 only) and iot (hub and br2; the hub's iot LAN 10.0.0.0/8 holds its other contexts'
addresses). Each host answers "who are you" on UDP 7. Prints one JSON line of facts.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from tests.root.xfrm_contexts_uml_payload import ask, kernel, start_who_servers_in
from tests.root.xfrm_uml_payload import ping, sh, start_captures, stop_captures

TOPOLOGY = """\
name: umlctx
secret: {psk: "uml-lab-psk"}
context_method: per-network
nodes:
  hub:
    role: hub
    contexts:
      - {name: corp, lan: 10.1.0.0/24, hosts: 1}
      - {name: guest, lan: 10.1.0.0/24, hosts: 1}
      - {name: voice, lan: 10.5.0.0/24, hosts: 1}
      - {name: iot, lan: 10.0.0.0/8, hosts: 1}  # holds every other context's hub address
  br1:
    role: branch
    hubs: [hub]
    contexts:
      - {name: corp, lan: 10.1.1.0/24, hosts: 1}
      - {name: guest, lan: 10.1.1.0/24, hosts: 1}
      - {name: voice, lan: 10.5.1.0/24, hosts: 1}
  br2:
    role: branch
    hubs: [hub]
    contexts:
      - {name: corp, lan: 10.1.2.0/24, hosts: 1}
      - {name: guest, lan: 10.1.2.0/24, hosts: 1}
      - {name: iot, lan: 172.16.2.0/24, hosts: 1}
"""
ROUTERS = ("hub", "br1", "br2")
FABRIC = "fabric"
WORK = Path(tempfile.mkdtemp(prefix="ctxlab-", dir="/run"))
FACTS: dict[str, Any] = {}


def plan() -> Any:
    from vpnlab.topology.loader import load_topology

    path = WORK / "umlctx.yml"
    path.write_text(TOPOLOGY)
    return load_topology(path)


def wire(lab: Any) -> dict[str, str]:
    """The fabric: a bridge per segment, a veth per interface. Returns router -> its wan0's fabric port."""
    sh("ip", "netns", "add", FABRIC)
    sh("ip", "link", "set", "lo", "up", ns=FABRIC)
    for seg in lab.segments:
        sh("ip", "link", "add", seg.name[:15], "type", "bridge", ns=FABRIC)
        sh("ip", "link", "set", seg.name[:15], "up", ns=FABRIC)
    ports: dict[str, str] = {}
    for k, node in enumerate(lab.nodes):
        ns = node.name
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", ns=ns, check=False)
        if node.role != "host":
            from vpnlab.kinds.router import ROUTER_SYSCTLS

            for key, value in {**ROUTER_SYSCTLS, "net.ipv4.fwmark_reflect": "1"}.items():
                sh("sysctl", "-qw", f"{key}={value}", ns=ns)
        for j, iface in enumerate(node.interfaces):
            port = f"p{k}x{j}"
            sh("ip", "link", "add", port, "netns", FABRIC, "type", "veth", "peer", "name", iface.name, "netns", ns)
            sh("ip", "link", "set", port, "master", iface.segment[:15], "up", ns=FABRIC)
            if iface.name == "wan0":
                ports[node.name] = port
            if node.role == "host":  # the runtime configures hosts; routers configure themselves
                sh("ip", "addr", "add", str(iface.address), "dev", iface.name, ns=ns)
                sh("ip", "link", "set", iface.name, "up", ns=ns)
        if node.role == "host":
            sh("ip", "route", "add", "default", "via", str(node.gateway), ns=ns)
    return ports


def ctl(router: str, *args: str) -> dict[str, Any] | None:
    done = subprocess.run([sys.executable, "-m", "vpnlab_agent", "ctl", "--socket", str(WORK / f"{router}.sock"), *args],
                          capture_output=True, text=True, timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def wait_up(routers: tuple[str, ...], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = {r: ctl(r, "summary") for r in routers}
        if all(s and s["ready"] and s["tunnels"] and all(v == "up" for v in s["tunnels"].values()) for s in last.values()):
            return last
        time.sleep(0.2)
    raise RuntimeError(f"tunnels not up in {timeout} s: {last}")


def children(router: str) -> dict[str, dict[str, Any]]:
    st = ctl(router, "status") or {}
    return {c["peer"]: c for c in st.get("child_sas", [])}


def main() -> dict[str, Any]:
    from vpnlab.nodeconfig import build_node_config

    facts = FACTS
    t0 = time.monotonic()
    lab = plan()
    ports = wire(lab)
    ctx = mp.get_context("fork")
    start_who_servers_in(ctx, [n.name for n in lab.nodes if n.role == "host"])
    agents = {}
    captures: list[Any] = []
    for r in ROUTERS:  # the hub first, as deploy starts hubs first
        cfg = WORK / f"{r}.json"
        cfg.write_text(build_node_config(lab, lab.node(r)).to_json())
        log = open(WORK / f"{r}.log", "w")
        agents[r] = subprocess.Popen(["ip", "netns", "exec", r, sys.executable, "-m", "vpnlab_agent", "run",
                                      "--config", str(cfg), "--socket", str(WORK / f"{r}.sock"), "--wait", "10"],
                                     stdout=log, stderr=subprocess.STDOUT)
    try:
        facts["summary"] = wait_up(ROUTERS, 60)
        facts["up_s"] = time.monotonic() - t0
        # from here on (before: a branch's first IKE_SA_INIT may meet the hub not yet listening,
        # and its kernel answers port unreachable, an underlay ICMP about IKE, not a leak)
        captures = start_captures(ctx, tuple((FABRIC, ports[r]) for r in ROUTERS), sent_by="peer")
        facts["contexts"] = {r: (ctl(r, "status") or {})["services"]["contexts"] for r in ROUTERS}
        facts["kernel_up"] = {r: kernel(r, ("corp", "guest", "voice") if r != "br2" else ("corp", "guest")) for r in ROUTERS}

        # branch to branch through the hub, corp and guest asking the same address; and to the hub's LANs
        counts = {"corp": 3, "guest": 5}
        facts["ping"] = {c: ping(f"br1-{c}1", "10.1.2.10", count=n) for c, n in counts.items()}
        facts["who"] = {
            "br1-corp1>10.1.2.10": ask("br1-corp1", "10.1.2.10"), "br1-guest1>10.1.2.10": ask("br1-guest1", "10.1.2.10"),
            "br2-corp1>10.1.1.10": ask("br2-corp1", "10.1.1.10"), "br2-guest1>10.1.0.10": ask("br2-guest1", "10.1.0.10"),
            "br1-voice1>10.5.0.10": ask("br1-voice1", "10.5.0.10"), "br2-iot1>10.0.0.10": ask("br2-iot1", "10.0.0.10"),
        }
        # voice exists at the hub and br1 only: br2's contexts have no route to it, nor br1's voice to br2
        facts["cross"] = {
            "br2-corp1>10.5.1.10": ask("br2-corp1", "10.5.1.10"), "br2-corp1>10.5.0.10": ask("br2-corp1", "10.5.0.10"),
            "br1-voice1>10.1.2.10": ask("br1-voice1", "10.1.2.10"),
            "br1-voice1>10.1.2.10 ping": ping("br1-voice1", "10.1.2.10", count=2),
        }
        facts["children"] = {r: children(r) for r in ROUTERS}
    finally:
        facts["wire"] = stop_captures(captures) if captures else None
        for r, proc in agents.items():
            proc.send_signal(signal.SIGTERM)
        facts["exit"] = {r: proc.wait(20) for r, proc in agents.items()}
        facts["logs_tail"] = {r: (WORK / f"{r}.log").read_text()[-1500:] for r in ROUTERS}
    facts["kernel_closed"] = {r: kernel(r, ("corp", "guest")) for r in ROUTERS}
    facts["payload_s"] = time.monotonic() - t0
    return facts


if __name__ == "__main__":
    try:
        result = main()
        code = 0
    except Exception:
        result = {**FACTS, "error": traceback.format_exc()}
        code = 1
    print("RESULT " + json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(code)
