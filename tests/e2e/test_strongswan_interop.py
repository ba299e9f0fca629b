"""Interoperability with a real third-party IKEv2/ESP implementation: strongSwan 5.9 (charon,
kernel-libipsec) as branch against our hub, and as hub against our branch. In both directions the
IKE and child SAs come up, hosts ping through, and forced child rekeys (from either side) in the
middle of a running TCP transfer break nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.topology.model import Lab

from .ipsec import child_for, run, status, wait_for_children

pytestmark = pytest.mark.e2e
TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


def _deploy(runtime: DockerRuntime, topo: str, prefix: str) -> Iterator[tuple[str, Lab]]:
    from .conftest import unique_name

    name = unique_name(prefix)
    try:
        labs.deploy(TOPOLOGIES / topo, name=name, runtime=runtime)
        lab = labs.load_lab(TOPOLOGIES / topo, name)
        for router in lab.routers:
            wait_for_children(runtime, name, router.name, 1)
        yield name, lab
    finally:
        labs.destroy(name, runtime=runtime)


@pytest.fixture(scope="module")
def strongswan_branch(node_image: str, runtime: DockerRuntime) -> Iterator[tuple[str, Lab]]:
    yield from _deploy(runtime, "strongswan-branch.yml", "swb")


@pytest.fixture(scope="module")
def strongswan_hub(node_image: str, runtime: DockerRuntime) -> Iterator[tuple[str, Lab]]:
    yield from _deploy(runtime, "strongswan-hub.yml", "swh")


def _addr(lab: Lab, node: str) -> str:
    return str(lab.node(node).interfaces[0].address.ip)


def _check_tunnel(runtime: DockerRuntime, name: str, lab: Lab) -> None:
    hub, branch = "hub", "br1"
    for node, peer in ((hub, branch), (branch, hub)):
        state = status(runtime, name, node)
        assert [sa["state"] for sa in state["ike_sas"] if sa["peer"] == peer] == ["established"], state["ike_sas"]
        child_for(state, peer)
    for src, dst in (("hub-h1", "br1-h1"), ("br1-h1", "hub-h1")):
        code, out = run(runtime, name, src, ["ping", "-c", "3", "-i", "0.2", "-W", "2", _addr(lab, dst)])
        assert code == 0, f"{src} -> {dst}: {out}"


def _rekey_during_transfer(runtime: DockerRuntime, name: str, lab: Lab) -> None:
    """An 8 s iperf3 TCP transfer hub-h1 -> br1-h1; child rekeys from both routers while it runs."""
    LabCtl(runtime, name).start_iperf3_server("br1-h1")
    result: dict[str, object] = {}

    def transfer() -> None:
        result["code"], result["out"] = run(runtime, name, "hub-h1", ["iperf3", "-c", _addr(lab, "br1-h1"), "-t", "8", "-J"])

    spis_before = {n: {c["spi_in"] for c in status(runtime, name, n)["child_sas"]} for n in ("hub", "br1")}
    worker = threading.Thread(target=transfer)
    worker.start()
    time.sleep(2.5)
    code, out = run(runtime, name, "hub", ["python3", "-m", "vpnlab_agent", "ctl", "rekey", "br1"])
    assert code == 0, out
    time.sleep(2.5)
    code, out = run(runtime, name, "br1", ["python3", "-m", "vpnlab_agent", "ctl", "rekey", "hub"])
    assert code == 0, out
    worker.join(timeout=30)
    assert not worker.is_alive(), "iperf3 did not finish"
    assert result["code"] == 0, str(result["out"])[-1500:]
    report = json.loads(str(result["out"]))
    assert "error" not in report, report["error"]
    received = report["end"]["sum_received"]["bytes"]
    assert received > 1_000_000, f"only {received} bytes arrived"
    for node in ("hub", "br1"):
        spis_after = {c["spi_in"] for c in status(runtime, name, node)["child_sas"]}
        assert spis_after - spis_before[node], f"{node}: no new child SA after the rekeys ({spis_after})"
    _check_tunnel(runtime, name, lab)  # still up after the old SAs were deleted


def test_strongswan_branch_with_our_hub(strongswan_branch: tuple[str, Lab], runtime: DockerRuntime) -> None:
    name, lab = strongswan_branch
    assert status(runtime, name, "br1")["implementation"] == "strongswan"
    _check_tunnel(runtime, name, lab)


def test_strongswan_branch_child_rekey_during_tcp(strongswan_branch: tuple[str, Lab], runtime: DockerRuntime) -> None:
    _rekey_during_transfer(runtime, *strongswan_branch)


def test_strongswan_hub_with_our_branch(strongswan_hub: tuple[str, Lab], runtime: DockerRuntime) -> None:
    name, lab = strongswan_hub
    assert status(runtime, name, "hub")["implementation"] == "strongswan"
    _check_tunnel(runtime, name, lab)


def test_strongswan_hub_with_two_branches_carries_its_lan_but_not_branch_to_branch(
        strongswan_hub: tuple[str, Lab], runtime: DockerRuntime) -> None:
    """strongSwan 5.9.8's kernel-libipsec fails a child SA whose local selector holds no address of
    the hub (strongSwan #1766): the agent leaves the other branch's LAN out of the hub's selectors,
    so both branches come up and reach the hub's LAN; br1 -> br2 is refused at br1 (its leak guard),
    never sent in the clear."""
    name, lab = strongswan_hub
    hub = status(runtime, name, "hub")
    if hub["dataplane"] != "strongswan-libipsec":
        pytest.skip(f"the hub runs {hub['dataplane']}: kernel XFRM forwards between branches")
    for branch in ("br1", "br2"):
        child = child_for(status(runtime, name, branch), "hub")
        assert child["state"] == "installed", child
        code, out = run(runtime, name, f"{branch}-h1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", _addr(lab, "hub-h1")])
        assert code == 0, f"{branch}-h1 -> hub-h1: {out}"
    code, out = run(runtime, name, "br1-h1", ["ping", "-c", "2", "-i", "0.2", "-W", "2", _addr(lab, "br2-h1")])
    assert code != 0 and "Unreachable" in out, out
    logs = runtime.logs(LabCtl(runtime, name).cname("hub"), None)
    assert "towards br1, kernel-libipsec cannot carry 10.2.0.0/24" in logs, logs[-2000:]


def test_strongswan_hub_child_rekey_during_tcp(strongswan_hub: tuple[str, Lab], runtime: DockerRuntime) -> None:
    _rekey_during_transfer(runtime, *strongswan_hub)
