"""The default lab, hub-spoke.yml, with real IKEv2 and ESP between our agents: every host reaches
every other host, branch-to-branch traffic crosses the hub, nothing in clear on the underlay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import permutations
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.topology.model import Lab

from .ipsec import UnderlayCapture, expected_engine, packets, run, status, wait_for_children

pytestmark = pytest.mark.e2e

PATTERN = "7670 6e6c 6162 2d70 6c61 696e 7465 7874"  # "vpnlab-plaintext", as ping -p wants it
PATTERN_BYTES = b"vpnlab-plaintext"


@pytest.fixture(scope="module")
def hub_spoke(node_image: str, runtime: DockerRuntime) -> Iterator[tuple[str, Lab]]:
    from .conftest import unique_name

    name = unique_name("hs")
    topo = Path(__file__).resolve().parents[2] / "topologies" / "hub-spoke.yml"
    try:
        labs.deploy(topo, name=name, runtime=runtime)
        lab = labs.load_lab(topo, name)
        wait_for_children(runtime, name, "hub", 3)
        for branch in ("br1", "br2", "br3"):
            wait_for_children(runtime, name, branch, 1)
        yield name, lab
    finally:
        labs.destroy(name, runtime=runtime)


def _host_address(lab: Lab, host: str) -> str:
    return str(lab.node(host).interfaces[0].address.ip)


def test_hub_spoke_every_host_reaches_every_host(hub_spoke: tuple[str, Lab], ping: Callable[[str, str, str], tuple[bool, str]]) -> None:
    name, lab = hub_spoke
    failures = []
    for a, b in permutations(lab.hosts, 2):
        ok, out = ping(name, a.name, _host_address(lab, b.name))
        if not ok:
            failures.append(f"{a.name} -> {b.name}: {out.strip()[-200:]}")
    assert not failures, "\n".join(failures)


def test_hub_spoke_branch_traffic_crosses_the_hub(hub_spoke: tuple[str, Lab], runtime: DockerRuntime) -> None:
    name, lab = hub_spoke
    before = status(runtime, name, "hub")
    code, out = run(runtime, name, "br1-h1", ["ping", "-c", "20", "-i", "0.05", "-W", "2", _host_address(lab, "br2-h1")])
    assert code == 0, out
    after = status(runtime, name, "hub")
    # 20 echo requests in from br1 and out to br2, 20 replies the other way, all through the hub
    assert packets(after, "br1", "in") - packets(before, "br1", "in") >= 20
    assert packets(after, "br2", "out") - packets(before, "br2", "out") >= 20
    assert packets(after, "br2", "in") - packets(before, "br2", "in") >= 20
    assert packets(after, "br1", "out") - packets(before, "br1", "out") >= 20


def test_hub_spoke_underlay_carries_no_plaintext(hub_spoke: tuple[str, Lab], runtime: DockerRuntime) -> None:
    name, lab = hub_spoke
    cap = UnderlayCapture(name)
    try:
        with cap:
            code, out = run(runtime, name, "br1-h1", ["ping", "-c", "10", "-i", "0.05", "-p", PATTERN.replace(" ", ""), _host_address(lab, "br3-h1")])
            assert code == 0, out
        raw = cap.raw()
        assert cap.count("udp port 4500") >= 40  # 10 requests + 10 replies, each on two tunnels
        assert PATTERN_BYTES not in raw
        lans = " or ".join(f"net {net}" for r in lab.routers for net in r.lan_subnets)
        assert cap.count(f"icmp and ({lans})") == 0  # no inner packet on the underlay
    finally:
        cap.cleanup()


def test_hub_spoke_inspect_shows_sas_and_engine(hub_spoke: tuple[str, Lab], runtime: DockerRuntime) -> None:
    name, _ = hub_spoke
    hub = status(runtime, name, "hub")
    assert hub["dataplane"] == expected_engine()  # whatever this kernel has, the probe must say so
    assert sorted(sa["peer"] for sa in hub["ike_sas"]) == ["br1", "br2", "br3"]
    assert all(sa["state"] == "established" for sa in hub["ike_sas"]), hub["ike_sas"]
    for child in hub["child_sas"]:
        assert child["spi_in"] and child["spi_out"] and child["local_ts"] and child["remote_ts"]

    from typer.testing import CliRunner

    from vpnlab.cli import app

    shown = CliRunner().invoke(app, ["inspect", name], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "tunnels" in shown.output and expected_engine() in shown.output
    for child in hub["child_sas"]:  # every child SA of the hub, with its SPIs, is in the table
        assert f"{child['spi_in']} / {child['spi_out']}" in shown.output
