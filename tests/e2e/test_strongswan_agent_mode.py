"""Two node-image containers, both in strongSwan mode, wired by one veth: the agent's strongSwan side.

  [hub-h 10.0.0.10] -- lan0 [hub] wan0 ==veth== wan0 [br1] lan0 -- [br1-h 10.1.0.10]

The agent in each container renders swanctl.conf/strongswan.conf from a hand-written NodeConfig,
runs charon with kernel-libipsec (ESP in userspace on ipsec0: this kernel has no ESP), and reports
the SAs. Checks: IKE + child SA up, LAN-to-LAN ping through the tunnel, counters in `ctl status`,
`ctl rekey` (child and IKE) in the middle of a running ping, clean exit 0 on SIGTERM.

The agent code under test is the working tree (bind-mounted, first on PYTHONPATH), not the copy in
the image, so this tests what is committed next to it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vpnlab.measure.labctl import tcp_listening
from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig, RouteConfig

pytestmark = pytest.mark.e2e

SRC = Path(__file__).resolve().parents[2] / "node-image"
HUB_WAN, BR_WAN = "198.51.100.10", "198.51.100.11"


def _docker() -> Any:
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception as exc:
        pytest.skip(f"no Docker engine reachable: {exc}")
    if os.geteuid() != 0:
        pytest.skip("needs root to wire veths into containers")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun on this host: kernel-libipsec needs TUN")
    return client


def _image(client: Any) -> str:
    tag = os.environ.get("VPNLAB_NODE_IMAGE")
    if tag:
        return tag
    try:
        from vpnlab.image import ensure_image
    except ImportError as exc:
        pytest.skip(f"vpnlab.image.ensure_image is not available ({exc}); set VPNLAB_NODE_IMAGE")
    return str(ensure_image())


def node(name: str, role: str, wan: str, lan: str, lan_net: str, peer: PeerConfig,
         routes: tuple[RouteConfig, ...] = ()) -> NodeConfig:
    return NodeConfig(
        lab="sstest", name=name, role=role, implementation="strongswan", public_address=wan,
        interfaces=(
            InterfaceConfig("wan0", "wan", (f"{wan}/24",)),
            InterfaceConfig("lan0", "lan", (f"{lan}/24",)),
        ),
        lan_subnets=(lan_net,), routes=routes,
        ike=IkeConfig(
            local_id=name, psk="e2e-shared-psk",
            ike_lifetime_s=3600, child_lifetime_s=1200, dpd_interval_s=5, peers=(peer,),
        ),
    )


def hub_config() -> NodeConfig:
    peer = PeerConfig("br1", "br1", None, False, ("10.0.0.0/24",), ("10.1.0.0/24",))
    return node("hub", "hub", HUB_WAN, "10.0.0.1", "10.0.0.0/24", peer)


def br1_config() -> NodeConfig:
    peer = PeerConfig("hub", "hub", HUB_WAN, True, ("10.1.0.0/24",), ("10.0.0.0/24",))
    # a default route into the underlay, as a branch has towards the internet: without the leak
    # guard, traffic for the hub's LAN would take it in plaintext whenever the tunnel is down
    return node("br1", "branch", BR_WAN, "10.1.0.1", "10.1.0.0/24", peer, (RouteConfig("0.0.0.0/0", via=HUB_WAN),))


class Lab:
    """The two containers, their veths and the two host namespaces; remove() undoes all of it."""

    def __init__(self, client: Any, image: str, tmp: Path) -> None:
        self.client = client
        self.image = image
        self.tmp = tmp
        self.tag = secrets.token_hex(3)
        self.containers: dict[str, Any] = {}

    def start(self, name: str, cfg: NodeConfig) -> Any:
        cfg_dir = self.tmp / name
        cfg_dir.mkdir()
        (cfg_dir / "node.json").write_text(cfg.to_json())
        container = self.client.containers.run(
            self.image, ["python3", "-m", "vpnlab_agent", "run"],
            name=f"vpnlab-sstest-{self.tag}-{name}", detach=True, init=True,
            network_mode="none", cap_add=["NET_ADMIN", "NET_RAW"],
            devices=["/dev/net/tun:/dev/net/tun"],
            sysctls={"net.ipv4.ip_forward": "1"},
            environment={"PYTHONPATH": "/opt/vpnlab-src", "PYTHONUNBUFFERED": "1"},
            volumes={
                str(cfg_dir): {"bind": "/etc/vpnlab", "mode": "ro"},
                str(SRC): {"bind": "/opt/vpnlab-src", "mode": "ro"},
            },
            labels={"vpnlab.test": "strongswan-agent-mode"},
        )
        self.containers[name] = container
        return container

    def pid(self, name: str) -> int:
        container = self.containers[name]
        container.reload()
        return int(container.attrs["State"]["Pid"])

    def start_host(self, name: str) -> Any:
        """A LAN host: a plain container of the same image (so ping comes from the image, not the host)."""
        container = self.client.containers.run(
            self.image, ["sleep", "infinity"], name=f"vpnlab-sstest-{self.tag}-{name}", detach=True,
            init=True, network_mode="none", cap_add=["NET_ADMIN", "NET_RAW"],
            labels={"vpnlab.test": "strongswan-agent-mode"},
        )
        self.containers[name] = container
        return container

    def host(self, name: str, *cmd: str) -> tuple[int, str]:
        result = self.containers[name].exec_run(list(cmd))
        return result.exit_code, result.output.decode(errors="replace")

    def wire(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            # wan: hub.wan0 <-> br1.wan0, one veth, no bridge in between. Moving and renaming in
            # one request: the new name applies in the target namespace.
            a, b = f"vs{self.tag}a", f"vs{self.tag}b"
            ipr.link("add", ifname=a, kind="veth", peer=b)
            ipr.link("set", index=ipr.link_lookup(ifname=a)[0], net_ns_pid=self.pid("hub"), ifname="wan0")
            ipr.link("set", index=ipr.link_lookup(ifname=b)[0], net_ns_pid=self.pid("br1"), ifname="wan0")
            # lan: router lan0 <-> eth0 of its LAN host container
            for name in ("hub", "br1"):
                c, h = f"vs{self.tag}{name[0]}c", f"vs{self.tag}{name[0]}h"
                ipr.link("add", ifname=c, kind="veth", peer=h)
                ipr.link("set", index=ipr.link_lookup(ifname=c)[0], net_ns_pid=self.pid(name), ifname="lan0")
                ipr.link("set", index=ipr.link_lookup(ifname=h)[0], net_ns_pid=self.pid(f"{name}-h"),
                         ifname="eth0")
        for name, addr, gw in (("hub-h", "10.0.0.10/24", "10.0.0.1"), ("br1-h", "10.1.0.10/24", "10.1.0.1")):
            for cmd in (["ip", "link", "set", "eth0", "up"], ["ip", "addr", "add", addr, "dev", "eth0"],
                        ["ip", "route", "add", "default", "via", gw]):
                code, out = self.host(name, *cmd)
                assert code == 0, f"{name}: {' '.join(cmd)}: {out}"

    def ctl(self, name: str, *args: str) -> tuple[int, str]:
        result = self.containers[name].exec_run(["python3", "-m", "vpnlab_agent", "ctl", *args],
                                                environment={"PYTHONPATH": "/opt/vpnlab-src"})
        return result.exit_code, result.output.decode(errors="replace")

    def status(self, name: str) -> dict[str, Any]:
        code, out = self.ctl(name, "status")
        assert code == 0, f"ctl status on {name} failed: {out}"
        return json.loads(out)

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{c.logs().decode(errors='replace')[-6000:]}" for name, c in self.containers.items()
        )

    def remove(self) -> None:
        # Removing the containers removes their namespaces and so every veth end inside them.
        for container in self.containers.values():
            try:
                container.remove(force=True)
            except Exception:
                pass


def installed_child(status: dict[str, Any]) -> dict[str, Any] | None:
    for child in status["child_sas"]:
        if child.get("state") == "installed":
            return child
    return None


def wait_for(pred: Any, timeout: float, what: str, lab: Lab) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} not reached within {timeout:g} s\n{lab.logs()}")


@pytest.fixture
def lab(tmp_path: Path) -> Any:
    client = _docker()
    image = _image(client)
    lab = Lab(client, image, tmp_path)
    try:
        lab.start("hub", hub_config())
        lab.start("br1", br1_config())
        lab.start_host("hub-h")
        lab.start_host("br1-h")
        lab.wire()
        yield lab
    finally:
        lab.remove()


def ping(lab: Lab, src: str, dst: str, count: int, interval: str = "0.2") -> subprocess.Popen[str]:
    """ping from a LAN host container, in the background."""
    container = lab.containers[src]
    return subprocess.Popen(
        ["docker", "exec", container.id, "ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1", dst],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def received(output: str) -> int:
    # "20 packets transmitted, 20 received, 0% packet loss, time 3805ms"
    for line in output.splitlines():
        if "packets transmitted" in line:
            return int(line.split(",")[1].split()[0])
    return -1


def test_strongswan_tunnel_ping_status_rekey_and_sigterm(lab: Lab) -> None:
    # both agents configured their interfaces and have charon running
    for name in ("hub", "br1"):
        st = wait_for(lambda n=name: (s := lab.status(n))["ready"] and s, 60, f"{name} ready", lab)
        assert st["implementation"] == "strongswan" and st["dataplane"] == "strongswan-libipsec"
        assert st["errors"] == [], st["errors"]
        names = {i["name"]: i for i in st["interfaces"]}
        assert names["wan0"]["up"] and names["lan0"]["up"]

    # the branch initiates (start_action = start): IKE SA and child SA up on both sides
    br = wait_for(lambda: installed_child(lab.status("br1")) and lab.status("br1"), 60, "br1 child SA", lab)
    hub = wait_for(lambda: installed_child(lab.status("hub")) and lab.status("hub"), 30, "hub child SA", lab)
    ike_br = br["ike_sas"][0]
    assert ike_br["peer"] == "hub" and ike_br["state"] == "established" and ike_br["initiator"] is True
    assert ike_br["local"] == f"{BR_WAN}:4500" and ike_br["remote"] == f"{HUB_WAN}:4500"  # encap = yes
    assert ike_br["algorithms"] == "aes128gcm16-prfsha256-ecp256"
    assert hub["ike_sas"][0]["peer"] == "br1" and hub["ike_sas"][0]["initiator"] is False
    child_br = installed_child(br)
    assert child_br["local_ts"] == ["10.1.0.0/24"] and child_br["remote_ts"] == ["10.0.0.0/24"]
    assert child_br["algorithm"] == "aes-gcm-16-128" and child_br["encap"] is True
    # the hub's inbound SPI is the branch's outbound one: the two ends agree on one SA pair
    assert installed_child(hub)["spi_in"] == child_br["spi_out"]

    # LAN host to LAN host through the tunnel, and the counters saw it
    p = ping(lab, "br1-h", "10.0.0.10", 5)
    out, _ = p.communicate(timeout=30)
    assert received(out) == 5, out + lab.logs()
    child = installed_child(lab.status("br1"))
    assert child["packets_out"] >= 5 and child["packets_in"] >= 5 and child["bytes_in"] > 0, child
    hub_child = installed_child(lab.status("hub"))
    assert hub_child["packets_in"] >= 5 and hub_child["packets_out"] >= 5, hub_child
    # traffic from the branch's LAN actually went through ipsec0 (route in table 220)
    routes = lab.status("br1")["routes"]
    assert any(r["dst"] == "10.0.0.0/24" and r["dev"] == "ipsec0" for r in routes), routes

    # rekey the child SA, then the IKE SA, in the middle of a running ping (100 pings, 10 s)
    old_spi = child["spi_in"]
    old_ike_spi = lab.status("br1")["ike_sas"][0]["spi_i"]
    p = ping(lab, "br1-h", "10.0.0.10", 100, "0.1")
    time.sleep(2)
    code, out = lab.ctl("br1", "rekey", "hub")
    assert code == 0, out
    assert json.loads(out)["matches"] >= 1
    wait_for(lambda: (c := installed_child(lab.status("br1"))) and c["spi_in"] != old_spi, 15,
             "new child SA after rekey", lab)
    code, out = lab.ctl("br1", "rekey", "hub", "--ike")
    assert code == 0, out
    wait_for(lambda: any(s["spi_i"] != old_ike_spi and s["state"] == "established"
                         for s in lab.status("br1")["ike_sas"]), 15, "new IKE SA after rekey", lab)
    out, _ = p.communicate(timeout=60)
    got = received(out)
    assert got >= 98, f"rekeys mid-ping lost {100 - got} of 100 pings\n{out}"
    # one child SA left on each side after the rekeys (the old ones were deleted)
    assert len(lab.status("br1")["child_sas"]) == 1
    assert len(lab.status("hub")["child_sas"]) == 1

    # a TCP transfer (iperf3, 6 s) survives a forced child rekey in its middle
    spi_before = installed_child(lab.status("br1"))["spi_in"]
    lab.containers["hub-h"].exec_run(["iperf3", "-s", "-1", "-B", "10.0.0.10"], detach=True)
    wait_for(lambda: tcp_listening(lab.containers["hub-h"].exec_run(["cat", "/proc/net/tcp"]).output.decode(), 5201),
             10, "iperf3 in hub-h to listen", lab)
    client = subprocess.Popen(
        ["docker", "exec", lab.containers["br1-h"].id, "iperf3", "-c", "10.0.0.10", "-t", "6", "-J"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(3)
    code, out = lab.ctl("br1", "rekey", "hub")
    assert code == 0, out
    report_text, _ = client.communicate(timeout=60)
    assert client.returncode == 0, report_text
    report = json.loads(report_text)
    received_bytes = report["end"]["sum_received"]["bytes"]
    mbit = report["end"]["sum_received"]["bits_per_second"] / 1e6
    print(f"iperf3 through strongSwan libipsec with a child rekey: {mbit:.0f} Mbit/s")
    assert received_bytes > 1_000_000, report["end"]
    assert installed_child(lab.status("br1"))["spi_in"] != spi_before

    # an IKE SA that disappears behind the agent's back (terminated with swanctl directly, so no
    # close_action fires) is brought back by the agent's keeper
    ike_spi = lab.status("br1")["ike_sas"][0]["spi_i"]
    result = lab.containers["br1"].exec_run(["swanctl", "--terminate", "--ike", "hub"])
    assert result.exit_code == 0, result.output
    wait_for(lambda: any(s["state"] == "established" and s["spi_i"] != ike_spi
                         for s in lab.status("br1")["ike_sas"]) and installed_child(lab.status("br1")),
             20, "IKE SA re-initiated by the keeper", lab)
    assert "no IKE SA with hub: initiating again" in lab.containers["br1"].logs().decode()

    # ctl terminate takes the tunnel down and keeps it down; ctl initiate brings it back
    code, out = lab.ctl("br1", "terminate", "hub")
    assert code == 0, out
    wait_for(lambda: lab.status("br1")["ike_sas"] == [], 10, "SAs gone after terminate", lab)
    # meanwhile the leak guard refuses the remote LAN: nothing leaves for it in plaintext
    routes = lab.status("br1")["routes"]
    assert {"dst": "10.0.0.0/24", "via": None, "dev": None, "table": 254, "type": "unreachable",
            "metric": 4090} in routes, routes
    sniff = subprocess.Popen(
        ["docker", "exec", lab.containers["hub"].id, "timeout", "4", "tcpdump", "-l", "-n", "-i", "wan0", "icmp"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(1.5)
    p = ping(lab, "br1-h", "10.0.0.10", 3)
    out, _ = p.communicate(timeout=30)
    assert received(out) == 0, out
    wire, _ = sniff.communicate(timeout=30)
    assert "10.1.0.10" not in wire and "listening on wan0" in wire, wire
    time.sleep(5)  # longer than the keeper's check interval in all
    assert lab.status("br1")["ike_sas"] == []
    code, out = lab.ctl("br1", "initiate", "hub")
    assert code == 0, out
    assert installed_child(lab.status("br1")) is not None

    # resident memory of the agent process itself (charon not included), for the record
    rss = lab.containers["br1"].exec_run(["ps", "-o", "rss=", "-C", "python3"]).output.decode().split()
    print(f"agent RSS in strongSwan mode: {max(int(r) for r in rss) / 1024:.1f} MiB")

    # control errors are one line and exit 1
    code, out = lab.ctl("br1", "rekey", "nosuchpeer")
    assert code == 1 and "unknown peer" in out and out.count("\n") <= 1, out

    # SIGTERM: the agent terminates the SAs, stops charon and exits 0, quickly
    br1 = lab.containers["br1"]
    t0 = time.monotonic()
    br1.stop(timeout=15)
    took = time.monotonic() - t0
    assert br1.wait(timeout=5)["StatusCode"] == 0, lab.logs()
    assert took < 10, f"agent took {took:.1f} s to stop"
    logs = br1.logs().decode(errors="replace")
    assert "charon stopped" in logs and "agent: stopped" in logs, logs[-3000:]
    # the hub saw the DELETE: its SAs are gone without waiting for DPD
    wait_for(lambda: lab.status("hub")["ike_sas"] == [], 10, "hub dropped the branch's SAs", lab)

    # charon dying under the agent is reported (not ready, one error), and SIGTERM still exits 0
    charon_pid = lab.status("hub")["services"]["strongswan"]["charon_pid"]
    assert lab.containers["hub"].exec_run(["kill", "-KILL", str(charon_pid)]).exit_code == 0
    st = wait_for(lambda: (s := lab.status("hub"))["errors"] and s, 10, "charon death reported", lab)
    assert st["ready"] is False and st["errors"] == ["strongswan: charon exited with code -9"], st["errors"]
    hub = lab.containers["hub"]
    hub.stop(timeout=15)
    assert hub.wait(timeout=5)["StatusCode"] == 0, lab.logs()
