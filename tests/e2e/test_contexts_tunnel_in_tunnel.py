"""Routing contexts, method tunnel-in-tunnel: one IPsec tunnel per site pair, a VXLAN per context in it.

One lab (topologies/hsvpn.yml with context_method: tunnel-in-tunnel) for the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

from .contexts import BRANCHES, CONTEXTS, ONLY_IN_CORP, contexts_status, deploy_method, host_addr, ping, wait_all_contexts
from .ipsec import UnderlayCapture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    c = deploy_method(tmp_path_factory.mktemp("tit"), "tunnel-in-tunnel", runtime, "hsvpnt")
    ctl = next(c)
    wait_all_contexts(ctl)
    yield ctl
    next(c, None)


def test_tunnel_in_tunnel_every_context_reaches_every_site(ctl: LabCtl) -> None:
    for ctx in CONTEXTS:
        assert ping(ctl, f"br1-{ctx}1", host_addr("hub", ctx)) == 2, ctx
        assert ping(ctl, f"br1-{ctx}1", host_addr("br3", ctx)) == 2, ctx  # branch to branch via the hub


def test_tunnel_in_tunnel_overlapping_contexts_stay_apart(ctl: LabCtl) -> None:
    assert ping(ctl, "br1-corp1", ONLY_IN_CORP) == 2
    assert ping(ctl, "br1-guest1", ONLY_IN_CORP) == 0  # the same address in guest: nobody there
    assert ping(ctl, "br1-voice1", host_addr("br2", "corp")) == 0  # voice has no route into corp


def test_tunnel_in_tunnel_path_mtu_errors_come_back_in_the_context(ctl: LabCtl) -> None:
    # too big for the VXLAN inside the tunnel: the router's "fragmentation needed" must reach the
    # host, routed in the host's context (fwmark_reflect), or TCP would stall on a PMTU black hole
    _, out = ctl.run("br1-guest1", ["ping", "-n", "-M", "do", "-c", "2", "-s", "1472", "-W", "1", host_addr("hub", "guest")])
    assert "Frag needed" in out or "mtu" in out, out
    ctl.run("hub-corp1", ["iperf3", "-s", "-1", "-D", "-p", "5299"])
    code, out = wait_for("iperf3 server", lambda: (r := ctl.run(
        "br1-corp1", ["iperf3", "-c", host_addr("hub", "corp"), "-n", "4M", "-p", "5299"]))[0] == 0 and r, 20)
    assert "receiver" in out, out  # 4 MB of full-size TCP segments through the VXLAN in the tunnel


def test_tunnel_in_tunnel_sa_counts_match_the_formulas(ctl: LabCtl) -> None:
    hub = ctl.status("hub")
    assert len([s for s in hub["ike_sas"] if s["state"] == "established"]) == len(BRANCHES)  # sites x 1 IPsec
    assert len(hub["child_sas"]) == len(BRANCHES)
    st = contexts_status(ctl, "hub")
    assert st["method"] == "tunnel-in-tunnel"
    inner = sum(len(c["peers"]) for c in st["contexts"])
    assert inner == len(BRANCHES) * len(CONTEXTS)  # sites x contexts inner tunnels
    assert {c["device"] for c in st["contexts"]} == {"x-corp", "x-voice", "x-guest"}
    assert all(c["packets_out"] > 0 for c in st["contexts"])


def test_tunnel_in_tunnel_underlay_shows_only_esp_in_udp(ctl: LabCtl) -> None:
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
