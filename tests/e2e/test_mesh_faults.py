"""Advanced Mesh VPN limits and faults on real containers: licence limit, idle teardown, a branch
that vanishes, a hub restart, and a strongSwan branch (no Vendor ID) in a mesh lab.

Numbers are the behaviours of issue #4. The hub restart is a real one (`vpnlab stop` and `start`:
the container stops, and comes back wired by lifecycle.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.measure.report import hub_pair
from vpnlab.runtime.docker import DockerRuntime

from .ipsec import host_addresses

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

H: dict[str, str] = {}  # router -> address of its first host, from the loaded labs (_deploy fills it)

FAULTS = """\
name: faults
secret: {psk: "mesh-faults-psk"}
defaults: {mesh: {enabled: true}}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  br1: {role: branch, lan: 10.1.0.0/24, hosts: 1, mesh: {max_tunnels: 1}}
  br2: {role: branch, lan: 10.2.0.0/24, hosts: 1}
  br3: {role: branch, lan: 10.3.0.0/24, hosts: 1, mesh: {idle_timeout: 3}}
"""

STRONGSWAN = """\
name: ssmesh
secret: {psk: "mesh-ss-psk"}
defaults: {mesh: {enabled: true}}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  br1: {role: branch, lan: 10.1.0.0/24, hosts: 1}
  br5: {role: branch, lan: 10.5.0.0/24, hosts: 1, implementation: strongswan}
"""


def _deploy(tmp: Path, text: str, runtime: DockerRuntime) -> tuple[str, LabCtl]:
    p = tmp / "lab.yml"
    p.write_text(text)
    name = f"f{uuid.uuid4().hex[:6]}"
    labs.deploy(p, name=name, runtime=runtime)
    H.update(host_addresses(labs.load_lab(p, name)))
    return name, LabCtl(runtime, name)


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    name = ""
    try:
        name, c = _deploy(tmp_path_factory.mktemp("faults"), FAULTS, runtime)
        wait_for("IKE SAs with the hub", lambda: all("hub" in c.ike_peers(b) for b in ("br1", "br2", "br3")), 30)
        yield c
    finally:
        if name:
            labs.destroy(name, runtime=runtime)


def ping(ctl: LabCtl, host_of: str, dst: str, count: int = 5, interval: float = 0.2) -> int:
    _, out = ctl.run(f"{host_of}-h1", ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst])
    return out.count("bytes from")


def test_8_mesh_licence_limit_keeps_traffic_on_the_hub_and_says_why(ctl: LabCtl) -> None:
    assert ping(ctl, "br2", H["br1"]) == 5  # trigger at br1: br1 <-> br2, br1's only slot
    wait_for("shortcut br1<->br2", lambda: ctl.shortcuts("br1").get("br2") == "up", 10)
    hub0 = hub_pair(ctl.status("hub"), "br1", "br3")
    assert ping(ctl, "br3", H["br1"], 10, 0.1) == 10  # trigger at br1 again: over its limit
    refused = wait_for("br1 refusal", lambda: [r for r in ctl.mesh("br1")["refused"] if r["code"] == "LIMIT_REACHED"], 5)
    assert refused[0]["reason"] == "mesh tunnel limit reached"
    assert ping(ctl, "br1", H["br3"], 5, 0.1) == 5  # trigger at br3: br1 refuses as initiator, br3 says why
    wait_for("br3 hears the refusal",
             lambda: [r for r in ctl.mesh("br3")["refused"] if r["peer"] == "br1" and r["code"] == "LIMIT_REACHED"], 5)
    assert set(ctl.shortcuts("br1")) == {"br2"} and "br1" not in ctl.shortcuts("br3")
    time.sleep(1.0)
    assert hub_pair(ctl.status("hub"), "br1", "br3")[0] - hub0[0] >= 30  # it all went via the hub


def test_7_shortcut_idle_teardown_falls_back_to_the_hub_and_rebuilds(ctl: LabCtl) -> None:
    assert ping(ctl, "br2", H["br3"], 2) == 2  # trigger at br3 (idle timeout 3 s)
    wait_for("shortcut br2<->br3", lambda: ctl.shortcuts("br2").get("br3") == "up", 10)
    shortcut = [c for c in ctl.status("br2")["child_sas"] if c["peer"] == "br3"]
    assert shortcut and all(c["remote_ts"] == ["10.3.0.0/24"] and c["preference"] > 0 for c in shortcut)
    t0 = time.monotonic()
    wait_for("idle teardown", lambda: "br3" not in ctl.shortcuts("br2") and "br2" not in ctl.shortcuts("br3"), 15)
    took = time.monotonic() - t0
    assert 1.5 < took < 10, took
    assert "br3" not in [s["peer"] for s in ctl.status("br2")["ike_sas"]]  # INFORMATIONAL DELETE went through
    _, routes = ctl.run("br2", ["ip", "-4", "route"])
    assert "10.3.0.0/24 dev ipsec0" in routes  # the hub tunnel's route and SA carry it again
    assert not [c for c in ctl.status("br2")["child_sas"] if c["peer"] == "br3"]
    ends = [t["end"] for t in ctl.mesh("br3")["timeline"] if t["peer"] == "br2" and t["end"]]
    assert "idle" in ends
    hub0 = hub_pair(ctl.status("hub"), "br2", "br3")
    assert ping(ctl, "br2", H["br3"], 3) == 3  # new session: through the hub first, then a new shortcut
    wait_for("shortcut rebuilt", lambda: ctl.shortcuts("br3").get("br2") == "up", 10)
    time.sleep(0.6)
    assert hub_pair(ctl.status("hub"), "br2", "br3")[0] > hub0[0]


def test_10_shortcut_to_a_vanished_branch_is_cleaned_up_by_dpd(ctl: LabCtl, runtime: DockerRuntime) -> None:
    assert ctl.shortcuts("br1").get("br2") == "up"
    c = runtime.client.containers.get(ctl.cname("br2"))
    c.pause()
    try:
        t0 = time.monotonic()
        wait_for("br1 drops the shortcut to the frozen br2", lambda: "br2" not in ctl.shortcuts("br1"), 60, 1.0)
        took = time.monotonic() - t0
    finally:
        c.unpause()
    ends = [t["end"] for t in ctl.mesh("br1")["timeline"] if t["peer"] == "br2" and t["end"]]
    assert any(e.startswith("down:") for e in ends), ends
    assert "br2" not in ctl.ike_peers("br1") and took < 60
    # br1's only licence slot is free again: a new session builds a new shortcut
    wait_for("br2 back with the hub", lambda: "hub" in ctl.ike_peers("br2"), 40, 1.0)
    # (br1 refused br3 in test 8: that pair is held down for 30 s, then may try again)
    wait_for("hold-down over", lambda: not ctl.mesh("br1")["holddown"], 35, 1.0)
    assert ping(ctl, "br3", H["br1"], 3) >= 2
    wait_for("shortcut br1<->br3", lambda: ctl.shortcuts("br1").get("br3") == "up", 20)


def test_10_mesh_hub_restart_leaves_shortcuts_working_and_nothing_stale(ctl: LabCtl, runtime: DockerRuntime) -> None:
    import threading

    from vpnlab import lifecycle

    assert ctl.shortcuts("br1").get("br3") == "up"
    got: list[int] = []
    # Traffic over the shortcut all along (it also keeps br3's 3 s idle timer from firing).
    pinger = threading.Thread(target=lambda: got.append(ping(ctl, "br1", H["br3"], 80, 0.5)))
    pinger.start()
    lifecycle.stop_node(ctl.lab, "hub", runtime)
    try:
        wait_for("branches notice the hub is gone", lambda: "hub" not in ctl.ike_peers("br1"), 60, 1.0)
        assert ctl.shortcuts("br1").get("br3") == "up"  # shortcuts do not depend on the hub
        time.sleep(5)  # the hub stays down a while
    finally:
        lifecycle.start_node(ctl.lab, "hub", runtime)
    pinger.join(60)
    assert got and got[0] >= 79, got  # not one ping lost while the hub was gone
    wait_for("star back", lambda: all("hub" in ctl.ike_peers(b) for b in ("br1", "br2", "br3")), 60, 1.0)
    time.sleep(11)  # longer than the request timeout: nothing may be left half-built
    for b in ("br1", "br2", "br3"):
        states = {s["state"] for s in ctl.mesh(b)["shortcuts"]}
        assert states <= {"up"}, (b, states)
    assert ctl.mesh("hub")["branches"]["br1"]["vpnlab_peer"] is True
    assert ping(ctl, "br2", H["br1"], 3) == 3  # through the restored star


def test_10_mesh_strongswan_branch_keeps_working_via_the_hub(node_image: str, runtime: DockerRuntime,
                                                             tmp_path: Path) -> None:
    name = ""
    try:
        name, c = _deploy(tmp_path, STRONGSWAN, runtime)
        wait_for("IKE SAs at the hub", lambda: sorted(c.ike_peers("hub")) == ["br1", "br5"], 40, 0.5)
        assert c.mesh("hub")["branches"]["br5"]["vpnlab_peer"] is False
        assert ping(c, "br5", H["br1"], 5) == 5  # trigger at br1; br5 cannot build: refused at the hub
        refused = wait_for("refusal", lambda: [r for r in c.mesh("br1")["refused"] if r["peer"] == "br5"], 5)
        assert refused[0]["code"] == "PEER_NOT_CAPABLE"
        assert ping(c, "br1", H["br5"], 5) == 5
        assert c.shortcuts("br1") == {}
    finally:
        if name:
            labs.destroy(name, runtime=runtime)
