"""Routing contexts, method per-network: one IPsec tunnel per context per site pair.

One lab (topologies/hsvpn.yml) for the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

from .contexts import BRANCHES, CONTEXTS, ONLY_IN_CORP, contexts_status, deploy_method, host_addr, ping, wait_all_contexts
from .ipsec import UnderlayCapture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    c = deploy_method(tmp_path_factory.mktemp("pernet"), "per-network", runtime, "hsvpnp")
    ctl = next(c)
    wait_all_contexts(ctl)
    yield ctl
    next(c, None)


def test_per_network_every_context_reaches_every_site(ctl: LabCtl) -> None:
    for ctx in CONTEXTS:
        assert ping(ctl, f"br1-{ctx}1", host_addr("hub", ctx)) == 2, ctx
        assert ping(ctl, f"br1-{ctx}1", host_addr("br3", ctx)) == 2, ctx  # branch to branch via the hub


def test_per_network_overlapping_contexts_stay_apart(ctl: LabCtl) -> None:
    assert ping(ctl, "br1-corp1", ONLY_IN_CORP) == 2
    assert ping(ctl, "br1-guest1", ONLY_IN_CORP) == 0  # the same address in guest: nobody there
    assert ping(ctl, "br1-voice1", host_addr("br2", "corp")) == 0


def test_per_network_one_tunnel_per_context_per_site_pair(ctl: LabCtl) -> None:
    hub = ctl.status("hub")
    up = [s for s in hub["ike_sas"] if s["state"] == "established"]
    assert len(up) == len(BRANCHES) * len(CONTEXTS)  # sites x contexts IPsec tunnels
    assert len(hub["child_sas"]) == len(BRANCHES) * len(CONTEXTS)
    st = contexts_status(ctl, "hub")
    assert st["method"] == "per-network"
    for c in st["contexts"]:
        assert sorted(s["peer"] for s in c["sas"]) == sorted(f"{b}.{c['name']}" for b in BRANCHES), c
        assert all(s["tag"] == 0 for s in c["sas"])  # plain RFC 4303: the SA is the context


def test_per_network_full_size_tcp_in_a_context(ctl: LabCtl) -> None:
    ctl.run("hub-guest1", ["iperf3", "-s", "-1", "-D", "-p", "5299"])
    code, out = wait_for("iperf3 server", lambda: (r := ctl.run(
        "br2-guest1", ["iperf3", "-c", host_addr("hub", "guest"), "-n", "4M", "-p", "5299"]))[0] == 0 and r, 20)
    assert "receiver" in out, out


def test_per_network_underlay_shows_only_esp_in_udp(ctl: LabCtl) -> None:
    pattern = "c0ffee11c0ffee11"
    with UnderlayCapture(ctl.lab) as cap:
        for ctx in CONTEXTS:
            ctl.run(f"br2-{ctx}1", ["ping", "-n", "-c", "2", "-i", "0.2", "-p", pattern, host_addr("br1", ctx)])
    try:
        assert cap.count("udp port 4500") >= 12
        other = cap.lines("not (udp port 4500 or udp port 500 or arp)")
        assert other == [], other  # nothing but IKE and ESP-in-UDP on the underlay
        assert bytes.fromhex(pattern) not in cap.raw()
    finally:
        cap.cleanup()
