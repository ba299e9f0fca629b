"""A branch on two hubs measures its NAT type (docs/mesh.md, "How a branch knows its NAT type"):
both hubs report the mapping they see its IKE SA come from; the same one from both means an
endpoint-independent NAT, different ones a symmetric NAT. Two branches on one shared NAT device are
not tried (it does not hairpin) and stay on the hub. One lab for the module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LAB = """\
name: mnatm
secret: {psk: "mesh-nat-measured-psk"}
defaults:
  mesh: {enabled: true, hole_punching: true}
nodes:
  hub1: {role: hub, lan: 10.0.0.0/24, mesh: {enabled: false}}
  hub2: {role: hub, lan: 10.9.0.0/24, mesh: {enabled: false}}
  eim: {role: branch, hubs: [hub1, hub2], nat: endpoint-independent, lan: 10.1.0.0/24}
  sym: {role: branch, hubs: [hub1, hub2], nat: symmetric, lan: 10.3.0.0/24}
  cgn: {role: nat, type: endpoint-independent}
  k1: {role: branch, hubs: [hub1], nat: cgn, lan: 10.5.0.0/24, hosts: 1}
  k2: {role: branch, hubs: [hub1], nat: cgn, lan: 10.6.0.0/24, hosts: 1}
"""


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    name = f"mm{uuid.uuid4().hex[:6]}"
    path: Path = tmp_path_factory.mktemp("mnatm") / "mnatm.yml"
    path.write_text(LAB)
    try:
        labs.deploy(path, name=name, runtime=runtime)
        yield LabCtl(runtime, name)
    finally:
        labs.destroy(name, runtime=runtime)


@pytest.mark.parametrize("branch,want", [("eim", "endpoint-independent"), ("sym", "symmetric")])
def test_nat_type_measured_from_the_mappings_two_hubs_see(ctl: LabCtl, branch: str, want: str) -> None:
    def both() -> dict | None:  # type: ignore[type-arg]
        nat = ctl.mesh(branch)["nat"]
        return nat if len(nat["mappings"]) == 2 else None

    nat = wait_for(f"{branch}'s mappings from both hubs", both, 30)
    seen = {h: ctl.mesh(h)["branches"][branch]["mapping"] for h in ("hub1", "hub2")}
    assert nat["mappings"] == seen  # what each hub told the branch is what the hub sees
    assert nat["type"] == want and nat["source"] == "measured: mappings seen by 2 hubs"
    assert (seen["hub1"] == seen["hub2"]) is (want == "endpoint-independent")


def test_nat_two_branches_on_one_shared_device_stay_on_the_hub(ctl: LabCtl) -> None:
    wait_for("k1 and k2 up with hub1", lambda: all("hub1" in ctl.ike_peers(b) for b in ("k1", "k2")), 30)
    _, out = ctl.run("k1-h1", ["ping", "-n", "-c", "5", "-i", "0.1", "-W", "2", "10.6.0.10"])
    assert out.count("bytes from") == 5  # via the hub; the session triggers at k2
    refused = wait_for("k2's refusal", lambda: [r for r in ctl.mesh("k2")["refused"] if r["peer"] == "k1"], 10)
    assert refused[0]["code"] == "SAME_NAT"
    assert refused[0]["line"] == "shortcut k1→k2 not tried: both are behind the same NAT device (it does not hairpin)"
    assert "k1" not in ctl.shortcuts("k2")
