"""Routing contexts, method hsvpn: one IPsec tunnel per site pair, the context tag in the ESP trailer.

One lab (topologies/hsvpn.yml, with Advanced Mesh VPN on for the branches) for the module. Only
the last test triggers a shortcut between br1 and br2; br1 -> br3 sessions go through the hub.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

from .contexts import (
    BRANCHES,
    CONTEXTS,
    ONLY_IN_CORP,
    check_every_context_reaches_every_site,
    check_full_size_tcp,
    check_overlapping_contexts_stay_apart,
    check_underlay_shows_only_esp_in_udp,
    contexts_status,
    deploy_method,
    host_addr,
    ping,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    with deploy_method(tmp_path_factory.mktemp("hsvpn"), "hsvpn", runtime, "hsvpnh", mesh=True) as ctl:
        yield ctl


def test_hsvpn_every_context_reaches_every_site(ctl: LabCtl) -> None:
    check_every_context_reaches_every_site(ctl, branch_to_branch_all=False)  # a shortcut may start


def test_hsvpn_overlapping_contexts_stay_apart(ctl: LabCtl) -> None:
    check_overlapping_contexts_stay_apart(ctl)


def test_hsvpn_one_tagged_sa_per_site_pair(ctl: LabCtl) -> None:
    hub = ctl.status("hub")
    assert len([s for s in hub["ike_sas"] if s["state"] == "established"]) == len(BRANCHES)
    assert len(hub["child_sas"]) == len(BRANCHES)
    st = contexts_status(ctl, "hub")
    assert st["method"] == "hsvpn"
    for c in st["contexts"]:
        tags = {s["tag"] for s in c["sas"]}
        assert len(c["sas"]) == len(BRANCHES) and len(tags) == 1 and 0 not in tags, c
        assert all(s["packets_in"] > 0 and s["packets_out"] > 0 for s in c["sas"]), c


def test_hsvpn_full_size_tcp_in_a_context(ctl: LabCtl) -> None:
    check_full_size_tcp(ctl, "hub-guest1", "br2-guest1", host_addr("hub", "guest"))


def test_hsvpn_underlay_shows_only_esp_in_udp(ctl: LabCtl) -> None:
    check_underlay_shows_only_esp_in_udp(ctl)


def test_hsvpn_inspect_shows_contexts_and_per_context_counters(ctl: LabCtl) -> None:
    from typer.testing import CliRunner

    from vpnlab.cli import app

    r = CliRunner().invoke(app, ["inspect", ctl.lab], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "routing contexts (hsvpn)" in r.output
    for want in ("corp", "voice", "guest", "t-guest", "103", "br1 tag 3:"):
        assert want in r.output, want


def test_hsvpn_mesh_shortcut_carries_every_context(ctl: LabCtl) -> None:
    # a session in voice alone triggers it ...
    ping(ctl, "br2-voice1", host_addr("br1", "voice"), 3)
    wait_for("shortcut br1<->br2", lambda: ctl.shortcuts("br1").get("br2") == "up", 20)
    st = contexts_status(ctl, "br1")
    by_ctx = {c["name"]: {s["peer"]: s for s in c["sas"]} for c in st["contexts"]}
    # ... and the one shortcut SA is in every context, with every context's tag
    assert all("br2" in sas for sas in by_ctx.values()), by_ctx
    spis = {sas["br2"]["spi_in"] for sas in by_ctx.values()}
    assert len(spis) == 1, by_ctx
    before = {c: by_ctx[c]["br2"]["packets_out"] for c in CONTEXTS}
    for ctx in CONTEXTS:
        assert ping(ctl, f"br1-{ctx}1", host_addr("br2", ctx), 3) == 3, ctx
    after = {c["name"]: {s["peer"]: s for s in c["sas"]}["br2"]["packets_out"] for c in contexts_status(ctl, "br1")["contexts"]}
    assert all(after[c] >= before[c] + 3 for c in CONTEXTS), (before, after)  # every context took the shortcut
    assert ping(ctl, "br1-guest1", ONLY_IN_CORP) == 0  # still apart on the shortcut
