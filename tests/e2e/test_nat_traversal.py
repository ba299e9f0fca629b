"""Branches behind real NAT devices (nftables in their own containers), our agent and strongSwan:
NAT-D sees the NAT, IKE floats to 4500, ESP is UDP-encapsulated, and the hub sees each branch at
its NAT device's public address. One lab for the module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

LAB = """\
name: nat
secret: {psk: "nat-traversal-psk"}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  cgn: {role: nat, type: symmetric, mapping_timeout: 30}
  eim: {role: branch, nat: true, lan: 10.1.0.0/24, hosts: 1}
  sym: {role: branch, nat: cgn, lan: 10.2.0.0/24, hosts: 1}
  sym2: {role: branch, nat: cgn, lan: 10.4.0.0/24, hosts: 1}
  ss: {role: branch, nat: true, implementation: strongswan, lan: 10.3.0.0/24, hosts: 1}
"""
HOSTS = {"hub": "10.0.0.10", "eim": "10.1.0.10", "sym": "10.2.0.10", "ss": "10.3.0.10", "sym2": "10.4.0.10"}
BRANCHES = ("eim", "sym", "sym2", "ss")


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    name = f"nat{uuid.uuid4().hex[:6]}"
    path: Path = tmp_path_factory.mktemp("nat") / "nat.yml"
    path.write_text(LAB)
    try:
        labs.deploy(path, name=name, runtime=runtime)
        c = LabCtl(runtime, name)
        wait_for("every branch's IKE SA", lambda: all("hub" in c.ike_peers(b) for b in BRANCHES), 60)
        yield c
    finally:
        labs.destroy(name, runtime=runtime)


def ping(ctl: LabCtl, src: str, dst: str, count: int = 3) -> int:
    _, out = ctl.run(f"{src}-h1", ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", HOSTS[dst]])
    return out.count("bytes from")


def _ike(ctl: LabCtl, node: str, peer: str) -> dict:  # type: ignore[type-arg]
    return next(s for s in ctl.status(node)["ike_sas"] if s["peer"] == peer and s["state"] == "established")


def _public(ctl: LabCtl, device: str) -> str:
    return str(ctl.status(device)["services"]["nat"]["public"])


@pytest.mark.parametrize("branch", ["eim", "sym", "ss"])
def test_nat_d_sees_the_nat_and_ike_runs_on_4500_from_the_devices_address(ctl: LabCtl, branch: str) -> None:
    device = "cgn" if branch == "sym" else f"{branch}-nat"
    mine, theirs = _ike(ctl, branch, "hub"), _ike(ctl, "hub", branch)
    assert mine["nat"]["local"] is True and mine["local"].startswith("100.64.") and mine["local"].endswith(":4500")
    assert theirs["nat"]["remote"] is True and theirs["nat"]["local"] is False
    host, port = theirs["remote"].rsplit(":", 1)
    assert host == _public(ctl, device)
    if branch == "sym":
        assert port != "4500"  # a symmetric NAT picks a random port
    else:
        assert port == "4500"  # port-preserving


def test_nat_hosts_behind_both_nat_types_reach_the_hub_and_each_other(ctl: LabCtl) -> None:
    for b in BRANCHES:
        assert ping(ctl, b, "hub") == 3, b
        assert ping(ctl, "hub", b) == 3, b
    assert ping(ctl, "eim", "sym") == 3  # through the hub
    assert ping(ctl, "ss", "sym2") == 3


def test_nat_shared_symmetric_device_lists_one_mapping_per_branch_and_port(ctl: LabCtl) -> None:
    ping(ctl, "sym", "hub", 1)
    ping(ctl, "sym2", "hub", 1)
    nat = wait_for("cgn's 4500 mappings", lambda: [
        m for m in ctl.status("cgn")["services"]["nat"]["mappings"] if m["inside"].endswith(":4500")
    ] or None, 10)
    inside = {m["inside"].split(":")[0] for m in nat}
    assert inside == {"100.64.0.10", "100.64.0.11"}
    assert len({m["public"] for m in nat}) == len(nat)  # every mapping its own public port
    assert ctl.status("cgn")["services"]["nat"]["type"] == "symmetric"


def _child(ctl: LabCtl, node: str, peer: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in ctl.status(node)["child_sas"] if c["peer"] == peer and c["state"] == "installed")


def test_nat_rebinding_keeps_esp_flowing_without_a_rekey(ctl: LabCtl) -> None:
    """Flushing the symmetric NAT's conntrack gives the branch's next packet a new public port
    (RFC 7296 §2.23): the hub's data plane follows on the first authenticated ESP packet."""
    assert ping(ctl, "sym", "hub") == 3
    before, hub_before = _child(ctl, "sym", "hub"), _ike(ctl, "hub", "sym")
    code, out = ctl.run("cgn", ["conntrack", "-F"])
    assert code == 0, out
    assert ping(ctl, "sym", "hub", 5) >= 4  # the first reply may be the one that crossed the flush
    assert ping(ctl, "hub", "sym") == 3
    after, hub_after = _child(ctl, "sym", "hub"), _ike(ctl, "hub", "sym")
    assert (after["spi_in"], after["spi_out"]) == (before["spi_in"], before["spi_out"])  # no rekey
    assert hub_after["remote"] != hub_before["remote"]  # the IKE SA moved too
    assert ctl.status("hub")["services"]["ike"]["peer_moves"] >= 1


def test_nat_keepalives_are_sent_from_behind_the_nat_only(ctl: LabCtl) -> None:
    ike = wait_for("a NAT keepalive from eim", lambda: ctl.status("eim")["services"]["ike"]
                   if ctl.status("eim")["services"]["ike"]["nat_keepalives_sent"] else None, 30)
    assert ike["nat_keepalives_sent"] >= 1
    assert ctl.status("hub")["services"]["ike"]["nat_keepalives_sent"] == 0


def test_nat_device_lets_nothing_in_unasked(ctl: LabCtl) -> None:
    """A NAT device is no router for the internet: the hub cannot reach a branch's inside address."""
    code, _ = ctl.run("hub", ["ping", "-n", "-c", "1", "-W", "1", "100.64.0.10"])
    assert code != 0
