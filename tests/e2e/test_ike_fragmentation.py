"""IKE fragmentation (RFC 7383) on a real lab whose internet has a lowered MTU and drops IP fragments.

The real-world problem, emulated honestly: every router's wan0 link gets MTU 1000 (`vpnlab link
set --mtu`, both ends of the veth), so the kernel IP-fragments any larger IKE datagram, and an
nftables rule on the emulated internet (a bridge-family table in the fabric namespace, on the
`inet` bridge) drops IP fragments, as many NATs and firewalls do. An RSA-2048 certificate IKE_AUTH
(about 1.1 kB) then only crosses as RFC 7383 fragments of at most `fragment_size: 1000` bytes.

Each tunnel is torn down and initiated again after the MTU is lowered, so its IKE_AUTH crosses the
small-MTU path: our agent on both ends, a strongSwan 5.9.8 branch initiating to our hub, and our
branch initiating to a strongSwan hub. A branch with `fragmentation: false` shows that the same
path without fragmentation loses IKE_AUTH (its IKE_SA_INIT crosses, IKE_AUTH never does), so the
others cannot pass vacuously. ESP then still flows between our agents at the lowered MTU: their
TUN MTU follows wan0's, a ping of exactly that size crosses and a TCP transfer completes both ways.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vpnlab import lab as labs
from vpnlab import linkfault
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.topology.model import Lab

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MTU = 1000
TOPOLOGY = {
    "name": "frag",
    "secret": {"psk": "unused"},
    "defaults": {"auth": "cert", "crypto": {"cert_key": "rsa-2048", "fragment_size": MTU}},
    "nodes": {
        "hub": {"role": "hub", "hosts": 1},
        "shub": {"role": "hub", "implementation": "strongswan", "hosts": 1},
        "br1": {"role": "branch", "hubs": ["hub"], "hosts": 1},
        "br2": {"role": "branch", "hubs": ["hub"], "implementation": "strongswan", "hosts": 0},
        "br3": {"role": "branch", "hubs": ["shub"], "hosts": 0},
        "br4": {"role": "branch", "hubs": ["hub"], "hosts": 0, "crypto": {"fragmentation": False}},
    },
}
ROUTERS = ("hub", "shub", "br1", "br2", "br3", "br4")
NO_FRAGMENTS = """
table bridge vpnlab_nofrag {
  chain forward {
    type filter hook forward priority 0; policy accept;
    ether type ip ip frag-off & 0x3fff != 0 counter drop
  }
}
"""


def fabric(lab: str, *argv: str, stdin: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", f"vpnlab-{lab}", *argv], input=stdin, capture_output=True,
                          text=True, check=True, timeout=20).stdout


def dropped_fragments(lab: str) -> int:
    rules = json.loads(fabric(lab, "nft", "-j", "list", "table", "bridge", "vpnlab_nofrag"))["nftables"]
    return sum(e["counter"]["packets"] for r in rules if "rule" in r for e in r["rule"]["expr"] if "counter" in e)


@pytest.fixture(scope="module")
def lab(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Lab, LabCtl]]:
    from .conftest import unique_name

    path: Path = tmp_path_factory.mktemp("frag") / "frag.yml"
    path.write_text(yaml.safe_dump(TOPOLOGY))
    name = unique_name("frag")
    try:
        labs.deploy(path, name=name, runtime=runtime)  # every tunnel up at MTU 1500 first
        ctl = LabCtl(runtime, name)
        for router in ROUTERS:
            linkfault.set_mtu(name, router, "wan0", MTU, runtime)
        fabric(name, "nft", "-f", "-", stdin=NO_FRAGMENTS)
        yield name, labs.load_lab(path, name), ctl
    finally:
        labs.destroy(name, runtime=runtime)


def public(lab: Lab, node: str) -> str:
    return str(lab.node(node).interfaces[0].address.ip)


def ctl_agent(ctl: LabCtl, node: str, *argv: str) -> str:
    code, out = ctl.run(node, ["python3", "-m", "vpnlab_agent", "ctl", *argv])
    assert code == 0, f"{node}: ctl {' '.join(argv)}: {out}"
    return out


def established(ctl: LabCtl, node: str, peer: str) -> dict[str, Any] | None:
    sas = [s for s in ctl.status(node).get("ike_sas", []) if s["peer"] == peer and s["state"] == "established"]
    return sas[0] if sas else None


def fragments(ctl: LabCtl, node: str) -> dict[str, int]:
    """Our agent's RFC 7383 counters (`ike_fragments` of its IKE service)."""
    for service in ctl.status(node).get("services", {}).values():
        if isinstance(service, dict) and "ike_fragments" in service:
            return service["ike_fragments"]
    raise AssertionError(f"{node}: no ike_fragments in its status")


def reconnect(ctl: LabCtl, branch: str, hub: str) -> None:
    """A new IKE SA (IKE_AUTH with certificates) from the branch, over the lowered MTU."""
    old = established(ctl, branch, hub)
    ctl_agent(ctl, branch, "terminate", hub)
    wait_for(f"{branch}'s old IKE SA gone", lambda: (s := established(ctl, branch, hub)) is None
             or (old is not None and s["spi_i"] != old["spi_i"]), 30)
    ctl_agent(ctl, branch, "initiate", hub)


def test_path_loses_oversized_datagrams(lab: tuple[str, Lab, LabCtl]) -> None:
    """Without this the rest would prove nothing: 1200 bytes do not cross, 900 do, fragments are dropped."""
    name, topo, ctl = lab
    assert {v.mtu for v in linkfault.show_links(name, ctl.rt) if v.ifname == "wan0"} == {MTU}
    before = dropped_fragments(name)
    hub = public(topo, "hub")
    assert ctl.run("br1", ["ping", "-n", "-c", "1", "-W", "2", "-s", "900", hub])[0] == 0
    code, out = ctl.run("br1", ["ping", "-n", "-c", "2", "-W", "2", "-M", "dont", "-s", "1200", hub])
    assert code != 0, out
    assert dropped_fragments(name) > before


@pytest.mark.parametrize(("branch", "hub"), [("br1", "hub"), ("br2", "hub"), ("br3", "shub")],
                         ids=["agent-agent", "strongswan-to-agent", "agent-to-strongswan"])
def test_certificate_ike_auth_crosses_in_fragments(lab: tuple[str, Lab, LabCtl], branch: str, hub: str) -> None:
    name, topo, ctl = lab
    agent = "hub" if hub == "hub" else branch  # the end whose counters we read
    before = fragments(ctl, agent)
    reconnect(ctl, branch, hub)
    wait_for(f"{branch}'s new IKE SA with {hub}", lambda: established(ctl, branch, hub)
             and established(ctl, hub, branch), 40)
    after = fragments(ctl, agent)
    # our end sent its IKE_AUTH message in fragments and put the peer's back together
    assert after["messages_sent"] > before["messages_sent"] and after["reassembled"] > before["reassembled"], after
    assert after["invalid"] == before["invalid"]
    if "strongswan" in (topo.node(branch).implementation, topo.node(hub).implementation):
        swan = branch if topo.node(branch).implementation == "strongswan" else hub
        logs = ctl.rt.logs(ctl.cname(swan), 3000)
        assert "reassembled fragmented IKE message" in logs, logs[-3000:]
    # the child SA carries traffic (small packets: strongSwan's kernel-libipsec keeps its own MTU)
    host = "hub-h1" if hub == "hub" else "shub-h1"
    target = str(topo.node(branch).interfaces[1].address.ip)  # the branch's lan0
    wait_for(f"{host} -> {branch} through the tunnel",
             lambda: ctl.run(host, ["ping", "-n", "-c", "1", "-W", "1", target])[0] == 0, 20, 0.5)


def test_without_fragmentation_ike_auth_is_lost(lab: tuple[str, Lab, LabCtl]) -> None:
    """br4 has `fragmentation: false`: the same path loses its IKE_AUTH, every retransmission."""
    name, topo, ctl = lab
    before = dropped_fragments(name)
    reconnect(ctl, "br4", "hub")
    br4 = public(topo, "br4")
    half_open = wait_for("the hub's half-open IKE SA from br4 (IKE_SA_INIT crossed)", lambda: [
        s for s in ctl.status("hub")["ike_sas"] if s["remote"].startswith(f"{br4}:") and s["state"] == "half-open"], 20)
    wait_for("br4's IKE_AUTH retransmissions dropped as IP fragments", lambda: dropped_fragments(name) >= before + 4, 20)
    assert established(ctl, "br4", "hub") is None and half_open
    states = {s["state"] for s in ctl.status("br4")["ike_sas"] if s["peer"] == "hub"}
    assert states == {"auth-sent"}, states


def test_esp_follows_the_lowered_mtu(lab: tuple[str, Lab, LabCtl]) -> None:
    """Between our agents, over a tunnel made at MTU 1000: the TUN MTU is the underlay's less the ESP
    overhead; a ping of exactly that size crosses with DF set, and TCP runs both ways."""
    name, topo, ctl = lab
    reconnect(ctl, "br1", "hub")  # its child SAs are installed at both ends after the MTU went down
    wait_for("br1's IKE SA", lambda: established(ctl, "br1", "hub") and established(ctl, "hub", "br1"), 40)
    def tun_mtus() -> dict[str, int] | None:
        mtus = {n: int(ctl.run(n, ["cat", "/sys/class/net/ipsec0/mtu"])[1]) for n in ("hub", "br1")}
        return mtus if all(900 < m <= MTU - 28 - 8 - 8 - 16 - 2 for m in mtus.values()) else None
    mtus = wait_for("ipsec0 at both ends sized for the lowered underlay", tun_mtus, 10, 0.5)
    target = str(topo.node("br1-h1").interfaces[0].address.ip)
    size = min(mtus.values()) - 28  # ICMP payload that makes an inner packet of exactly the TUN MTU
    ok = wait_for("a full-size ping through the tunnel", lambda: ctl.run(
        "hub-h1", ["ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", str(size), target])[0] == 0, 20, 0.5)
    assert ok
    for reverse in (False, True):  # hub-h1 sends, then br1-h1 sends; a black hole would stall at once
        ctl.start_iperf3_server("br1-h1")
        argv = ["iperf3", "-J", "-t", "2", "-c", target] + (["-R"] if reverse else [])
        code, out = ctl.run("hub-h1", ["timeout", "30", *argv])
        assert code == 0, out[-2000:]
        end = json.loads(out)["end"]
        assert end["sum_received"]["bytes"] >= 1 << 20, (reverse, end["sum_received"], end["sum_sent"])
