"""The agent process for real in a network namespace: it waits for its interfaces, configures them,
answers `ctl status`, and on SIGTERM removes what it added and exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vpnlab_agent.config import InterfaceConfig, NodeConfig, RouteConfig

pytestmark = pytest.mark.root

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z r1 [a-z0-9_-]+: .+$")


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"
    return result.stdout


def config() -> NodeConfig:
    return NodeConfig(
        lab="t", name="r1", role="branch", implementation="agent", public_address="198.51.100.50",
        interfaces=(
            InterfaceConfig("wan0", "wan", ("198.51.100.50/24",)),
            InterfaceConfig("lan0", "lan", ("10.50.0.1/24", "10.51.0.1/24")),
        ),
        routes=(RouteConfig("192.0.2.0/24", via="198.51.100.1"), RouteConfig("10.60.0.0/16", dev="lan0")),
        lan_subnets=("10.50.0.0/24",),
    )


class Run:
    def __init__(self, tmp: Path, wait: float = 30, cfg: NodeConfig | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns, self.peer = f"vlag-{tag}", f"vlagp-{tag}"
        self.tag = tag
        self.sock = str(tmp / "run" / "agent.sock")
        self.cfg = tmp / "node.json"
        self.cfg.write_text((cfg or config()).to_json())
        self.log = tmp / "agent.log"
        ip("netns", "add", self.ns)
        ip("netns", "add", self.peer)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "vpnlab_agent", "run",
                 "--config", str(self.cfg), "--socket", self.sock, "--wait", str(wait)],
                stdout=out, stderr=subprocess.STDOUT,
            )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vpnlab_agent", "ctl", "--socket", self.sock, *args],
                              capture_output=True, text=True, timeout=30)

    def status(self) -> dict[str, Any] | None:
        result = self.ctl("status")
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_status(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st is not None and pred(st):
                return st
            assert self.proc.poll() is None, f"agent exited early:\n{self.log.read_text()}"
            time.sleep(0.1)
        pytest.fail(f"{what} not reached in {timeout} s:\n{self.log.read_text()}")

    def plug(self) -> None:
        """What the orchestrator does after start: veths moved in (their other ends in a peer netns)."""
        for name in ("wan0", "lan0"):
            a, b = f"vl{self.tag}{name[0]}", f"vl{self.tag}{name[0]}p"
            ip("link", "add", a, "type", "veth", "peer", "name", b)
            ip("link", "set", b, "netns", self.peer, "up")
            ip("link", "set", a, "netns", self.ns, "name", name)

    def stop(self) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        return code, time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for ns in (self.ns, self.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    yield r
    r.close()


def test_agent_configures_the_namespace_reports_and_cleans_up(run: Run) -> None:
    # Before the interfaces exist the agent already answers, and is not ready.
    st = run.wait_status(lambda s: True, 20, "control socket")
    assert st["ready"] is False and st["node"] == "r1"
    assert run.ctl("status").returncode == 0
    run.plug()
    st = run.wait_status(lambda s: s["ready"], 20, "ready")

    ifaces = {i["name"]: i for i in st["interfaces"]}
    assert ifaces["wan0"]["up"] and ifaces["lan0"]["up"] and ifaces["lo"]["up"]
    assert ifaces["wan0"]["addresses"] == ["198.51.100.50/24"]
    assert sorted(ifaces["lan0"]["addresses"]) == ["10.50.0.1/24", "10.51.0.1/24"]
    routes = {(r["dst"], r["via"], r["dev"], r["table"]) for r in st["routes"]}
    assert ("192.0.2.0/24", "198.51.100.1", "wan0", 254) in routes
    assert ("10.60.0.0/16", None, "lan0", 254) in routes
    assert ("198.51.100.0/24", None, "wan0", 254) in routes  # connected
    assert st["implementation"] == "agent" and st["errors"] == [] and st["ike_sas"] == []

    # what the kernel says, independently of the agent's own report
    kernel_routes = ip("-n", run.ns, "route", "show")
    assert "192.0.2.0/24 via 198.51.100.1 dev wan0" in kernel_routes
    assert "10.60.0.0/16 dev lan0" in kernel_routes
    assert "state UP" in ip("-n", run.ns, "link", "show", "wan0") or "LOWER_UP" in ip("-n", run.ns, "link", "show", "wan0")

    # unknown peers are refused (no IKE here), with one line and exit 1
    bad = run.ctl("rekey", "hub")
    assert bad.returncode == 1 and "unknown peer 'hub'" in bad.stderr

    code, took = run.stop()
    assert code == 0 and took < 5, (code, took, run.log.read_text())
    # it removed what it added: addresses and routes gone, socket gone
    assert "inet " not in ip("-n", run.ns, "addr", "show", "wan0")
    assert "inet " not in ip("-n", run.ns, "addr", "show", "lan0")
    assert "192.0.2.0/24" not in ip("-n", run.ns, "route", "show")
    assert not os.path.exists(run.sock)
    lines = run.log.read_text().splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert "r1 netconfig: waiting for interfaces: wan0, lan0" in text
    assert "r1 agent: ready" in text and lines[-1].endswith("r1 agent: stopped")


def test_interfaces_that_never_come_are_reported_not_fatal(tmp_path: Path) -> None:
    r = Run(tmp_path, wait=1)
    try:
        st = r.wait_status(lambda s: s["errors"], 20, "an error in the status")
        assert st["ready"] is False
        assert st["errors"] == ["interfaces wan0, lan0 did not appear within 1 s"]
        code, took = r.stop()
        assert code == 0 and took < 5
    finally:
        r.close()


def test_a_failure_half_way_is_reported_and_undone(tmp_path: Path) -> None:
    import dataclasses

    # the second route's gateway is on no connected network: the kernel refuses it, after the
    # addresses and the first route went in
    bad = dataclasses.replace(config(), routes=(
        RouteConfig("10.60.0.0/16", dev="lan0"), RouteConfig("192.0.2.0/24", via="203.0.113.1"),
    ))
    r = Run(tmp_path, cfg=bad)
    try:
        r.plug()
        st = r.wait_status(lambda s: s["errors"], 20, "an error in the status")
        assert st["ready"] is False
        (error,) = st["errors"]
        assert error.startswith("route 192.0.2.0/24 via 203.0.113.1: ") and "\n" not in error
        assert "10.60.0.0/16 dev lan0" in ip("-n", r.ns, "route", "show")
        code, _ = r.stop()
        assert code == 0
        assert "inet " not in ip("-n", r.ns, "addr", "show", "wan0")
        assert "10.60.0.0/16" not in ip("-n", r.ns, "route", "show")
    finally:
        r.close()


def test_unreadable_config_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "node.json"
    cfg.write_text('{"lab": "t", "name": "r1", "nonsense": 1}')
    result = subprocess.run([sys.executable, "-m", "vpnlab_agent", "run", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot load" in result.stderr and "nonsense" in result.stderr


def _netns_with_wan0() -> str:
    ns = f"vlag-{uuid.uuid4().hex[:6]}"
    ip("netns", "add", ns)
    ip("-n", ns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p")
    ip("-n", ns, "link", "set", "lo", "up")
    return ns


def test_rendered_keepalived_conf_passes_keepalived_config_test(tmp_path: Path) -> None:
    import shutil

    from vpnlab_agent.cluster.keepalived import VrrpInstance, render

    if shutil.which("keepalived") is None:
        pytest.skip("keepalived is not installed on this host (apt-get install keepalived)")
    good = render("gw1", [VrrpInstance(
        "vpn_vip", "wan0", 51, 150, ("198.51.100.100/24",), unicast_src="198.51.100.21",
        unicast_peers=("198.51.100.22",), nopreempt=True, advert_int=0.1,
    )], notify_fifo=str(tmp_path / "vrrp.fifo"))
    ns = _netns_with_wan0()  # keepalived checks that the interface exists and is not loopback
    try:
        for text, expect_ok in ((good, True), (good.replace("advert_int", "advert_intx"), False)):
            conf = tmp_path / "keepalived.conf"
            conf.write_text(text)
            result = subprocess.run(["ip", "netns", "exec", ns, "keepalived", "-t", "-n", "-l", "-f", str(conf)],
                                    capture_output=True, text=True, timeout=30)
            assert (result.returncode == 0) is expect_ok, result.stdout + result.stderr
            if not expect_ok:
                assert "Unknown keyword 'advert_intx'" in result.stdout + result.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


_CHARON_SCRIPT = """
import asyncio, json, sys
from vpnlab_agent import log
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.strongswan.service import StrongswanPaths, StrongswanService
from vpnlab_agent.strongswan.vici import Vici

tmp = sys.argv[1]
cfg = NodeConfig.from_json(open(tmp + "/node.json").read())
log.setup(cfg.name)
paths = StrongswanPaths(strongswan_conf=tmp + "/strongswan.conf", swanctl_conf=tmp + "/swanctl/swanctl.conf",
                        vici_socket=tmp + "/charon.vici")

async def main():
    svc = StrongswanService(cfg, paths)
    await svc.start()
    with Vici(paths.vici_socket) as vici:
        conns, _ = vici.streamed("list-conns", "list-conn")
    await svc.refresh()
    status = svc.status()
    pid = status["charon_pid"]
    await svc.stop()
    print("RESULT " + json.dumps({"conns": conns, "status": status, "pid": pid, "dataplane": svc.dataplane}))

asyncio.run(main())
"""


def test_strongswan_service_runs_real_charon_for_a_two_branch_hub(tmp_path: Path) -> None:
    """A strongSwan hub with two responder connections loads into a real charon (in a netns, with
    every path under tmp_path, so the host's own strongSwan files are not touched), and stops."""
    import shutil

    from vpnlab_agent.config import IkeConfig, PeerConfig

    if not (shutil.which("charon-systemd") or os.path.exists("/usr/sbin/charon-systemd")):
        pytest.skip("strongSwan (charon-systemd) is not installed on this host")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun: kernel-libipsec needs it")
    hub = NodeConfig(
        lab="t", name="hub", role="hub", implementation="strongswan", public_address="198.51.100.10",
        interfaces=(InterfaceConfig("wan0", "wan", ("198.51.100.10/24",)),), lan_subnets=("10.0.0.0/24",),
        ike=IkeConfig(local_id="hub", psk="root-test", peers=(
            PeerConfig("br1", "br1", None, False, ("10.0.0.0/24",), ("10.1.0.0/24",)),
            PeerConfig("br2", "br2", None, False, ("10.0.0.0/24",), ("10.2.0.0/24",)),
        )),
    )
    (tmp_path / "node.json").write_text(hub.to_json())
    ns = _netns_with_wan0()
    try:
        result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CHARON_SCRIPT, str(tmp_path)],
                                capture_output=True, text=True, timeout=90)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    conns = {name: conn for event in out["conns"] for name, conn in event.items()}
    assert sorted(conns) == ["br1", "br2"]
    for name in ("br1", "br2"):
        assert conns[name]["remote_addrs"] == ["%any"] and conns[name]["local_addrs"] == ["198.51.100.10"]
        child = conns[name]["children"][name]
        assert child["local-ts"] == ["10.0.0.0/24"] and child["remote-ts"] == [f"10.{name[-1]}.0.0/24"]
        assert conns[name]["local-1"]["id"] == "hub" and conns[name]["remote-1"]["id"] == name
        assert conns[name]["remote-1"]["class"] == "pre-shared key" and conns[name]["rekey_time"] == "12960"  # 14400 s lifetime less a tenth
    assert out["status"]["running"] is True and out["status"]["errors"] == []
    assert out["status"]["ike_sas"] == [] and out["dataplane"] == "strongswan-libipsec"
    # charon's own lines came through the agent's log, and it is gone after stop()
    assert re.search(r"hub charon: .*loaded plugins: .*kernel-libipsec", result.stdout)
    assert "hub strongswan: charon stopped" in result.stdout
    assert not os.path.exists(f"/proc/{out['pid']}")


# Runs inside user-mode Linux (a kernel with ESP): two namespaces, a strongSwan hub and branch
# driven by StrongswanService with the kernel XFRM backend, LAN-to-LAN traffic over kernel ESP.
_UML_STRONGSWAN = r'''
import json, os, socket, struct, subprocess, sys, time

WORK = "/run/vpnlab-ss"
os.makedirs(WORK, exist_ok=True)
facts = {}

def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr}")
    return r.stdout

for ns in ("hub", "br1"):
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
sh("ip", "link", "add", "w-hub", "type", "veth", "peer", "name", "w-br1")
sh("ip", "link", "set", "w-hub", "netns", "hub", "name", "wan0")
sh("ip", "link", "set", "w-br1", "netns", "br1", "name", "wan0")
for ns, wan, lan in (("hub", "198.51.100.10", "10.0.0.1"), ("br1", "198.51.100.11", "10.1.0.1")):
    sh("ip", "-n", ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
    for cmd in (("addr", "add", wan + "/24", "dev", "wan0"), ("addr", "add", lan + "/24", "dev", "lan0"),
                ("link", "set", "wan0", "up"), ("link", "set", "lan0", "up"), ("link", "set", "lan0p", "up")):
        sh("ip", "-n", ns, *cmd)

from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig

def node(name, wan, lan, net, peer):
    return NodeConfig(lab="uml", name=name, role="hub" if name == "hub" else "branch",
        implementation="strongswan", public_address=wan, dataplane="xfrm",
        interfaces=(InterfaceConfig("wan0", "wan", (wan + "/24",)), InterfaceConfig("lan0", "lan", (lan + "/24",))),
        lan_subnets=(net,), ike=IkeConfig(local_id=name, psk="uml-psk", peers=(peer,)))

configs = {
    "hub": node("hub", "198.51.100.10", "10.0.0.1", "10.0.0.0/24",
                PeerConfig("br1", "br1", None, False, ("10.0.0.0/24",), ("10.1.0.0/24",))),
    "br1": node("br1", "198.51.100.11", "10.1.0.1", "10.1.0.0/24",
                PeerConfig("hub", "hub", "198.51.100.10", True, ("10.1.0.0/24",), ("10.0.0.0/24",))),
}

RUNNER = """
import asyncio, json, os, sys
from vpnlab_agent import log
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.strongswan.service import StrongswanPaths, StrongswanService
d = sys.argv[1]
cfg = NodeConfig.from_json(open(d + "/node.json").read())
log.setup(cfg.name)
paths = StrongswanPaths(strongswan_conf=d + "/strongswan.conf", swanctl_conf=d + "/swanctl.conf",
                        vici_socket=d + "/charon.vici")
async def main():
    svc = StrongswanService(cfg, paths)
    try:
        await svc.start()
        while not os.path.exists(d + "/stop"):
            if os.path.exists(d + "/rekey"):
                os.unlink(d + "/rekey")
                await svc.rekey(cfg.ike.peers[0].name, "child")
            await svc.refresh()
            st = svc.status()
            st["dataplane"] = svc.dataplane
            with open(d + "/status.tmp", "w") as f:
                json.dump(st, f)
            os.replace(d + "/status.tmp", d + "/status.json")
            await asyncio.sleep(0.3)
    finally:
        await svc.stop()
asyncio.run(main())
"""
procs = {}
for name, cfg in configs.items():
    d = f"{WORK}/{name}"
    os.makedirs(d, exist_ok=True)
    open(d + "/node.json", "w").write(cfg.to_json())
    procs[name] = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", RUNNER, d],
                                   stdout=open(d + "/log", "w"), stderr=subprocess.STDOUT)

def status(name):
    try:
        return json.load(open(f"{WORK}/{name}/status.json"))
    except (OSError, ValueError):
        return None

def installed(name):
    st = status(name)
    return st and [c for c in st["child_sas"] if c["state"] == "installed"]

def ping(count):
    # ICMP echo from the branch's LAN address to the hub's (no ping binary on these hosts)
    code = (
        "import socket,struct,sys,os\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP);s.settimeout(1);s.bind(('10.1.0.1',0))\n"
        "ok=0\n"
        "for seq in range(%d):\n"
        "  h=struct.pack('!BBHHH',8,0,0,os.getpid()&0xffff,seq)+b'vpnlab'\n"
        "  c=sum(struct.unpack('!%%dH'%%(len(h)//2),h));c=(c>>16)+(c&0xffff);c=~(c+(c>>16))&0xffff\n"
        "  h=h[:2]+struct.pack('!H',c)+h[4:]\n"
        "  s.sendto(h,('10.0.0.1',0))\n"
        "  try:\n"
        "    d=s.recv(2048)\n"
        "    ok+=d[20]==0\n"
        "  except socket.timeout: pass\n"
        "print(ok)\n" % count)
    return int(sh("ip", "netns", "exec", "br1", sys.executable, "-c", code).strip())

try:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (installed("br1") and installed("hub")):
        time.sleep(0.3)
    facts["hub_status"] = status("hub")
    facts["br1_status_up"] = status("br1")
    facts["replies"] = ping(5)
    facts["xfrm_state"] = sh("ip", "-n", "br1", "xfrm", "state")
    facts["br1_status_after_ping"] = status("br1")
    time.sleep(0.7)
    facts["br1_status_after_ping"] = status("br1")
    spi = installed("br1")[0]["spi_in"]
    open(f"{WORK}/br1/rekey", "w").close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not (installed("br1") and installed("br1")[0]["spi_in"] != spi
                                                 and len(status("br1")["child_sas"]) == 1):
        time.sleep(0.3)
    facts["br1_after_rekey"] = status("br1")
    facts["replies_after_rekey"] = ping(3)
finally:
    for name in procs:
        open(f"{WORK}/{name}/stop", "w").close()
    facts["exit_codes"] = {name: p.wait(timeout=20) for name, p in procs.items()}
    facts["xfrm_state_after"] = sh("ip", "-n", "br1", "xfrm", "state")
    facts["logs"] = {name: open(f"{WORK}/{name}/log").read()[-4000:] for name in procs}
    print("RESULT " + json.dumps(facts))
'''


@pytest.mark.uml
def test_strongswan_kernel_xfrm_backend_in_uml() -> None:
    """Where the kernel has ESP (user-mode Linux here), strongSwan mode uses kernel XFRM, not libipsec."""
    from tests.root import uml

    reason = uml.unavailable_reason()
    if reason:
        pytest.skip(reason)
    if not os.path.exists("/usr/sbin/charon-systemd"):
        pytest.skip("strongSwan (charon-systemd) is not installed on this host")
    result = uml.run_python(_UML_STRONGSWAN, timeout_s=240)
    lines = [x for x in result.output.splitlines() if x.startswith("RESULT ")]
    assert lines, f"payload failed (rc {result.returncode}):\n{result.output[-4000:]}\n{result.console[-2000:]}"
    facts = json.loads(lines[-1].removeprefix("RESULT "))
    logs = "\n".join(facts["logs"].values())
    up = facts["br1_status_up"]
    assert up and up["dataplane"] == "strongswan-kernel", logs
    assert [c["state"] for c in up["child_sas"]] == ["installed"], logs
    assert up["ike_sas"][0]["algorithms"] == "aes128gcm16-prfsha256-ecp256"
    assert facts["replies"] == 5, logs
    # the SAs are kernel XFRM states (ESP in UDP, AES-GCM), and charon reads their counters
    assert "proto esp" in facts["xfrm_state"] and "rfc4106(gcm(aes))" in facts["xfrm_state"]
    assert "encap type espinudp sport 4500 dport 4500" in facts["xfrm_state"]
    (child,) = facts["br1_status_after_ping"]["child_sas"]
    assert child["packets_out"] >= 5 and child["packets_in"] >= 5, child
    # a child rekey moves to new SPIs and traffic keeps flowing
    (new,) = facts["br1_after_rekey"]["child_sas"]
    assert new["spi_in"] != child["spi_in"] and facts["replies_after_rekey"] == 3, logs
    # both services stopped cleanly and charon removed its kernel states
    assert facts["exit_codes"] == {"hub": 0, "br1": 0}, logs
    assert facts["xfrm_state_after"].strip() == ""


def test_control_socket_that_cannot_be_created_is_one_line_and_exit_1(tmp_path: Path) -> None:
    cfg = tmp_path / "node.json"
    cfg.write_text(config().to_json())
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the socket's directory should be
    result = subprocess.run([sys.executable, "-m", "vpnlab_agent", "run", "--config", str(cfg),
                             "--socket", str(blocker / "agent.sock")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert lines[-1].endswith(f"r1 agent: error: agent failed: FileExistsError: [Errno 17] File exists: '{blocker}'")
    assert result.stderr == ""


_GUARD_SCRIPT = """
import json, sys
from pyroute2 import IPRoute, NetlinkError
from vpnlab_agent import netconfig
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.rtnl import Rtnl
cfg = NodeConfig.from_json(open(sys.argv[1]).read())
out = {}
with Rtnl() as rt, IPRoute() as ipr:
    applied = netconfig.apply(rt, netconfig.plan(cfg))
    out["snapshot"] = netconfig.snapshot(rt)[1]
    lan0 = ipr.link_lookup(ifname="lan0")[0]

    def where(dst):
        try:
            return ipr.route("get", dst=dst)[0].get_attr("RTA_OIF") == lan0 and "lan0"
        except NetlinkError as exc:
            return exc.code  # EHOSTUNREACH (113): the unreachable route answered
    out["down"] = where("10.0.0.10")
    # what a data plane does when the tunnel comes up: its own route, metric 0, wins
    ipr.route("add", dst="10.0.0.0", dst_len=8, oif=lan0)
    out["up"] = where("10.0.0.10")
    ipr.route("del", dst="10.0.0.0", dst_len=8, oif=lan0)  # the data plane's delete leaves the guard
    out["down_again"] = where("10.0.0.10")
    netconfig.undo(rt, applied)
    out["after_undo"] = netconfig.snapshot(rt)[1]
print(json.dumps(out))
"""


def test_leak_guard_refuses_remote_lan_traffic_while_no_tunnel_route_exists(tmp_path: Path) -> None:
    import dataclasses

    from vpnlab_agent.config import IkeConfig, PeerConfig

    cfg = dataclasses.replace(config(), routes=(RouteConfig("0.0.0.0/0", via="198.51.100.1"),), ike=IkeConfig(
        local_id="r1", psk="x", peers=(PeerConfig("hub", "hub", "198.51.100.10", True, ("10.50.0.0/24",),
                                                  ("10.0.0.0/8",)),)))
    (tmp_path / "node.json").write_text(cfg.to_json())
    r = Run.__new__(Run)  # only the namespaces and veths, no agent process
    r.tag = uuid.uuid4().hex[:6]
    r.ns, r.peer = f"vlag-{r.tag}", f"vlagp-{r.tag}"
    ip("netns", "add", r.ns)
    ip("netns", "add", r.peer)
    try:
        r.plug()
        result = subprocess.run(["ip", "netns", "exec", r.ns, sys.executable, "-c", _GUARD_SCRIPT,
                                 str(tmp_path / "node.json")], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
    finally:
        for ns in (r.ns, r.peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    guard = {"dst": "10.0.0.0/8", "via": None, "dev": None, "table": 254, "type": "unreachable", "metric": 4090}
    assert guard in out["snapshot"]
    # the default route via the underlay would otherwise have carried it in plaintext
    assert {"dst": "0.0.0.0/0", "via": "198.51.100.1", "dev": "wan0", "table": 254, "type": "unicast",
            "metric": 0} in out["snapshot"]
    assert out["down"] == 113 and out["up"] == "lan0" and out["down_again"] == 113
    assert guard not in out["after_undo"]
