"""Routing contexts, method tunnel-in-tunnel: one IPsec tunnel per site pair, a VXLAN per context in it.

One lab (topologies/hsvpn.yml with context_method: tunnel-in-tunnel) for the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vpnlab.measure.labctl import LabCtl
from vpnlab.runtime.docker import DockerRuntime

from .contexts import (
    BRANCHES,
    CONTEXTS,
    check_every_context_reaches_every_site,
    check_full_size_tcp,
    check_overlapping_contexts_stay_apart,
    check_underlay_shows_only_esp_in_udp,
    contexts_status,
    deploy_method,
    host_addr,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    with deploy_method(tmp_path_factory.mktemp("tit"), "tunnel-in-tunnel", runtime, "hsvpnt") as ctl:
        yield ctl


def test_tunnel_in_tunnel_every_context_reaches_every_site(ctl: LabCtl) -> None:
    check_every_context_reaches_every_site(ctl)  # branch to branch via the hub


def test_tunnel_in_tunnel_overlapping_contexts_stay_apart(ctl: LabCtl) -> None:
    check_overlapping_contexts_stay_apart(ctl)


def test_tunnel_in_tunnel_path_mtu_errors_come_back_in_the_context(ctl: LabCtl) -> None:
    # too big for the VXLAN inside the tunnel: the router's "fragmentation needed" must reach the
    # host, routed in the host's context (fwmark_reflect), or TCP would stall on a PMTU black hole
    _, out = ctl.run("br1-guest1", ["ping", "-n", "-M", "do", "-c", "2", "-s", "1472", "-W", "1", host_addr("hub", "guest")])
    assert "Frag needed" in out or "mtu" in out, out
    check_full_size_tcp(ctl, "hub-corp1", "br1-corp1", host_addr("hub", "corp"))  # through the VXLAN in the tunnel


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
    check_underlay_shows_only_esp_in_udp(ctl)
