"""Mesh behind real NAT devices (docs/mesh.md, "Behind NAT: hole punching"): two branches behind two
endpoint-independent NATs get a direct shortcut through UDP hole punching signalled via the hub; a
branch behind a symmetric NAT stays on the hub and inspect says why; a branch behind NAT still
builds to a public branch as before. One lab for the module (topologies/mesh-nat.yml); each test
uses its own pair."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.measure.report import hub_pair
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOPO = Path(__file__).resolve().parents[2] / "topologies" / "mesh-nat.yml"
H = {b: f"10.{i}.0.10" for i, b in enumerate(("br1", "br2", "br3", "br4"), 1)}
BRANCHES = tuple(H)


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime) -> Iterator[LabCtl]:
    name = f"mn{uuid.uuid4().hex[:6]}"
    try:
        labs.deploy(TOPO, name=name, runtime=runtime)
        c = LabCtl(runtime, name)
        wait_for("every branch's IKE SA with the hub", lambda: all("hub" in c.ike_peers(b) for b in BRANCHES), 60)
        wait_for("the hub's mappings at the branches behind NAT",
                 lambda: all(c.mesh(b)["nat"]["mappings"] for b in ("br1", "br2", "br3")), 20)
        yield c
    finally:
        labs.destroy(name, runtime=runtime)


def ping(ctl: LabCtl, src: str, dst: str, count: int, interval: float = 0.1) -> int:
    _, out = ctl.run(f"{src}-h1", ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", H[dst]])
    return out.count("bytes from")


def public(ctl: LabCtl, device: str) -> str:
    return str(ctl.status(device)["services"]["nat"]["public"])


def shortcut_sa(ctl: LabCtl, node: str, peer: str) -> dict | None:  # type: ignore[type-arg]
    return next((s for s in ctl.status(node)["ike_sas"] if s["peer"] == peer and s["state"] == "established"), None)


def hub_sampled_after(ctl: LabCtl, t: float) -> bool:
    samples = ctl.mesh("hub").get("samples") or []
    return bool(samples) and samples[-1][0] > t


def test_nat_two_branches_behind_eim_nats_punch_a_direct_shortcut(ctl: LabCtl) -> None:
    br1_pub, br2_pub = public(ctl, "br1-nat"), public(ctl, "br2-nat")
    assert ctl.mesh("hub")["branches"]["br2"]["mapping"] == f"{br2_pub}:4500"
    assert ctl.mesh("br2")["nat"]["type"] == "endpoint-independent"
    assert ping(ctl, "br1", "br2", 10) == 10  # trigger at br2; the first packets cross the hub
    wait_for("shortcut br1->br2", lambda: ctl.shortcuts("br2").get("br1") == "up", 15)
    sa = wait_for("br1's IKE SA with br2", lambda: shortcut_sa(ctl, "br1", "br2"), 5)
    assert sa["initiator"] and sa["remote"] == f"{br2_pub}:4500" and sa["local"].endswith(":4500")
    assert sa["nat"] == {"local": True, "remote": True, "encap": True}
    back = shortcut_sa(ctl, "br2", "br1")
    assert back is not None and back["remote"] == f"{br1_pub}:4500"
    [cut] = [s for s in ctl.mesh("br2")["shortcuts"] if s["peer"] == "br1"]
    assert cut["punch"]["to"] == f"{br1_pub}:4500" and 1 <= cut["punch"]["sent"] <= 5
    tl = cut["timeline"]
    print(f"\nhole punching br1->br2: session seen -> routes switched {1000 * (tl['routes_switched'] - tl['session_seen']):.0f} ms, "
          f"punch {1000 * (tl['punch'] - tl['session_seen']):.0f} ms, IKE_AUTH {1000 * (tl['ike_auth'] - tl['session_seen']):.0f} ms")
    # the hub no longer carries the pair: its counters stand still while the shortcut's move
    hub_before = hub_pair(ctl.status("hub"), "br1", "br2")
    sc_before = sum(c.get("packets_out", 0) for c in ctl.status("br1")["child_sas"] if c["peer"] == "br2")
    assert ping(ctl, "br1", "br2", 20, 0.05) == 20
    t_end = ctl.mesh("hub")["now"]
    wait_for("a hub sample after the pings", lambda: hub_sampled_after(ctl, t_end), 5)
    assert hub_pair(ctl.status("hub"), "br1", "br2") == hub_before
    sc_after = sum(c.get("packets_out", 0) for c in ctl.status("br1")["child_sas"] if c["peer"] == "br2")
    assert sc_after - sc_before >= 20


def test_nat_symmetric_branch_stays_on_the_hub_and_inspect_says_why(ctl: LabCtl) -> None:
    assert ctl.mesh("br3")["nat"]["type"] == "symmetric"
    assert ping(ctl, "br1", "br3", 5) == 5  # trigger at br3 (behind the symmetric NAT), via the hub
    refused = wait_for("br3's refusal", lambda: [r for r in ctl.mesh("br3")["refused"] if r["peer"] == "br1"], 10)
    line = "shortcut br1→br3 not tried: br3 is behind a symmetric NAT (address-and-port-dependent mapping)"
    assert refused[0]["code"] == "REQUESTER_SYMMETRIC" and refused[0]["line"] == line
    assert "br3" not in ctl.shortcuts("br1") and "br1" not in ctl.shortcuts("br3")
    hub_before = hub_pair(ctl.status("hub"), "br1", "br3")
    assert ping(ctl, "br1", "br3", 10, 0.05) == 10
    t_end = ctl.mesh("hub")["now"]
    wait_for("a hub sample after the pings", lambda: hub_sampled_after(ctl, t_end), 5)
    assert hub_pair(ctl.status("hub"), "br1", "br3")[0] >= hub_before[0] + 20  # both ways via the hub
    out = subprocess.run([sys.executable, "-m", "vpnlab", "inspect", ctl.lab], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(line) == 1, out.stdout


def test_nat_branch_behind_nat_still_builds_to_a_public_branch(ctl: LabCtl) -> None:
    assert ping(ctl, "br1", "br4", 10) == 10  # trigger at br4 (public): br1 builds to its address
    wait_for("shortcut br1->br4", lambda: ctl.shortcuts("br4").get("br1") == "up", 15)
    sa = shortcut_sa(ctl, "br1", "br4")
    br4_wan = next(s for s in ctl.status("hub")["ike_sas"] if s["peer"] == "br4")["remote"].split(":")[0]
    assert sa is not None and sa["remote"].split(":")[0] == br4_wan
    [cut] = [s for s in ctl.mesh("br4")["shortcuts"] if s["peer"] == "br1"]
    assert cut["punch"] is None  # a public branch has nothing to punch
    assert ping(ctl, "br4", "br1", 5, 0.05) == 5


def test_nat_public_branch_reaches_eim_by_punching_and_symmetric_by_reversal(ctl: LabCtl) -> None:
    br2_pub = public(ctl, "br2-nat")
    assert ping(ctl, "br4", "br2", 10) == 10  # trigger at br2 (EIM): br4 builds to its mapping
    wait_for("shortcut br4->br2", lambda: ctl.shortcuts("br2").get("br4") == "up", 15)
    sa = wait_for("br4's IKE SA with br2", lambda: shortcut_sa(ctl, "br4", "br2"), 5)
    assert sa["initiator"] and sa["remote"] == f"{br2_pub}:4500"
    assert ping(ctl, "br4", "br3", 10) == 10  # trigger at br3 (symmetric): it initiates to br4
    wait_for("shortcut br3->br4", lambda: ctl.shortcuts("br3").get("br4") == "up", 15)
    sa = wait_for("br3's IKE SA with br4", lambda: shortcut_sa(ctl, "br3", "br4"), 5)
    assert sa["initiator"] and sa["nat"]["local"] is True
    assert [s["role"] for s in ctl.mesh("br4")["shortcuts"] if s["peer"] == "br3"] == ["acceptor"]
    assert ping(ctl, "br3", "br4", 5, 0.05) == 5
