"""Node lifecycle on real containers: `vpnlab restart` of a branch, a hub and a host brings each back
wired with its tunnels; a container restarted outside vpnlab shows as unwired and is healed."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab import lifecycle
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

LAB = """\
name: restart
secret: {psk: "restart-psk"}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  br1: {role: branch, lan: 10.1.0.0/24, hosts: 1}
  br2: {role: branch, nat: true, lan: 10.2.0.0/24, hosts: 1}
"""
HOSTS = {"hub": "10.0.0.10", "br1": "10.1.0.10", "br2": "10.2.0.10"}


@pytest.fixture(scope="module")
def lab(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LabCtl]]:
    name = f"rst{uuid.uuid4().hex[:6]}"
    path: Path = tmp_path_factory.mktemp("restart") / "restart.yml"
    path.write_text(LAB)
    try:
        labs.deploy(path, name=name, runtime=runtime)
        c = LabCtl(runtime, name)
        wait_for("both branches' IKE SAs", lambda: all("hub" in c.ike_peers(b) for b in ("br1", "br2")), 60)
        yield name, c
    finally:
        labs.destroy(name, runtime=runtime)


def reaches(ctl: LabCtl, src: str, dst: str) -> bool:
    code, _ = ctl.run(f"{src}-h1", ["ping", "-n", "-c", "1", "-W", "1", HOSTS[dst]])
    return code == 0


def everything_reachable(ctl: LabCtl) -> bool:
    return all(reaches(ctl, a, b) for a in HOSTS for b in HOSTS if a != b)


@pytest.mark.parametrize("node", ["br1", "br2", "hub", "br1-h1", "br2-nat"])
def test_restart_brings_the_node_back_wired_and_its_tunnels_by_themselves(
    lab: tuple[str, LabCtl], runtime: DockerRuntime, node: str
) -> None:
    name, ctl = lab
    before = runtime.get(ctl.cname(node))
    assert before is not None
    lifecycle.restart_node(name, node, runtime)
    after = runtime.get(ctl.cname(node))
    assert after is not None and after.state == "running" and after.pid != before.pid
    wait_for(f"every host pair after restarting {node}", lambda: everything_reachable(ctl), 30, interval=0.5)
    view = {n.name: n for n in labs.inspect_lab(name, runtime=runtime).nodes}
    assert view[node].up and not view[node].unwired


def test_restart_outside_vpnlab_shows_unwired_with_the_heal_command_and_start_heals(
    lab: tuple[str, LabCtl], runtime: DockerRuntime
) -> None:
    name, ctl = lab
    subprocess.run(["docker", "restart", "-t", "2", ctl.cname("br1")], check=True, capture_output=True)
    node = {n.name: n for n in labs.inspect_lab(name, runtime=runtime).nodes}["br1"]
    assert not node.up and node.unwired == ["wan0", "lan0"]
    assert node.problem is not None and f"vpnlab restart {name} br1" in node.problem
    lifecycle.start_node(name, "br1", runtime)
    wait_for("br1 reachable again", lambda: reaches(ctl, "hub", "br1") and reaches(ctl, "br1", "br2"), 30, interval=0.5)


def test_restart_stop_then_start(lab: tuple[str, LabCtl], runtime: DockerRuntime) -> None:
    name, ctl = lab
    info = lifecycle.stop_node(name, "br2", runtime)
    assert info.state == "exited"
    node = {n.name: n for n in labs.inspect_lab(name, runtime=runtime).nodes}["br2"]
    assert not node.up and f"vpnlab start {name} br2" in (node.problem or "")
    assert not reaches(ctl, "hub", "br2")
    lifecycle.start_node(name, "br2", runtime)
    wait_for("br2 reachable again", lambda: reaches(ctl, "hub", "br2"), 30, interval=0.5)
