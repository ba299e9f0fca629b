"""Routing contexts, method per-network: one IPsec tunnel per context per site pair.

One lab (topologies/hsvpn.yml) for the module.
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
    with deploy_method(tmp_path_factory.mktemp("pernet"), "per-network", runtime, "hsvpnp") as ctl:
        yield ctl


def test_per_network_every_context_reaches_every_site(ctl: LabCtl) -> None:
    check_every_context_reaches_every_site(ctl)  # branch to branch via the hub


def test_per_network_overlapping_contexts_stay_apart(ctl: LabCtl) -> None:
    check_overlapping_contexts_stay_apart(ctl)


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
    check_full_size_tcp(ctl, "hub-guest1", "br2-guest1", host_addr("hub", "guest"))


def test_per_network_underlay_shows_only_esp_in_udp(ctl: LabCtl) -> None:
    check_underlay_shows_only_esp_in_udp(ctl)
