"""`deploy` returns only once every configured tunnel is up at both ends, for our agent and for
strongSwan nodes alike (issue 8, point 7: in 3 of 5 deploys of a mesh lab with a strongSwan branch
the hub had no child SA with it yet, and a measurement started right then met "No route to host").
A tunnel that never comes up fails the deploy in one line that names it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from vpnlab_agent.config import CONFIG_PATH, IkeConfig, NodeConfig

from vpnlab import bringup
from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.kinds.registry import kind_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = pytest.mark.e2e

MIXED = """\
name: mixed
secret: {psk: "tunnels-up-psk"}
defaults: {mesh: {enabled: true}}
nodes:
  hub: {role: hub, lan: 10.0.0.0/24, hosts: 1}
  br1: {role: branch, lan: 10.1.0.0/24, hosts: 1}
  br2: {role: branch, lan: 10.2.0.0/24, hosts: 1}
  br5: {role: branch, lan: 10.5.0.0/24, hosts: 1, implementation: strongswan}
"""


def _up_peers(status: dict[str, object]) -> set[str]:
    ike = {s["peer"] for s in status["ike_sas"] if s["state"] == "established"}  # type: ignore[index, union-attr]
    return ike & {c["peer"] for c in status["child_sas"]}  # type: ignore[index, union-attr]


def test_every_tunnel_is_up_when_deploy_returns(
    node_image: str, runtime: DockerRuntime, lab_name: Callable[[], str], tmp_path: Path
) -> None:
    p = tmp_path / "mixed.yml"
    p.write_text(MIXED)
    name = lab_name()
    labs.deploy(p, name=name, runtime=runtime)
    # Straight away, no waiting: each end's full status (not the summary deploy polled) has an
    # established IKE SA and a child SA with each configured peer, and the first packet passes.
    status = {n: labs.agent_status(runtime.get(f"vpnlab-{name}-{n}")) for n in ("hub", "br1", "br2", "br5")}  # type: ignore[arg-type]
    assert _up_peers(status["hub"]) >= {"br1", "br2", "br5"}
    for branch in ("br1", "br2", "br5"):
        assert "hub" in _up_peers(status[branch]), (branch, status[branch]["ike_sas"], status[branch]["child_sas"])
    for src, dst in (("hub-h1", "10.5.0.10"), ("br5-h1", "10.1.0.10"), ("br2-h1", "10.0.0.10")):
        r = runtime.exec_capture(f"vpnlab-{name}-{src}", ["ping", "-c1", "-W2", dst])
        assert r.exit_code == 0, (src, dst, r.stdout.decode(), r.stderr.decode())
    labs.wait_tunnels(labs.load_lab(p, name), runtime)  # what measurements call first: returns at once


def test_a_tunnel_that_never_comes_up_fails_the_deploy_by_name(
    node_image: str, runtime: DockerRuntime, lab_name: Callable[[], str], tmp_path: Path,
    leftovers: Callable[[str], list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # br2 gets another PSK than the hub: its agent is ready, its tunnel never comes up.
    monkeypatch.setattr(bringup, "TUNNELS_BASE_S", 8.0)
    p = tmp_path / "mixed.yml"
    p.write_text(MIXED)
    name = lab_name()
    lab = labs.load_lab(p, name)
    spec = kind_for(lab.node("br2")).container_spec(lab, lab.node("br2"))
    config = NodeConfig.from_json(spec.files[CONFIG_PATH].decode())
    assert config.ike is not None
    wrong = "not-the-lab-psk"  # every key br2 holds: the lab-wide one and its tunnels' own
    config = dataclasses.replace(config, ike=dataclasses.replace(
        config.ike, psk=wrong, peers=tuple(dataclasses.replace(pc, psk=wrong) for pc in config.ike.peers)))
    assert isinstance(config.ike, IkeConfig)
    broken = dataclasses.replace(spec, files={**spec.files, CONFIG_PATH: config.to_json().encode()})
    with pytest.raises(LabError) as err:
        labs.deploy_lab(lab, node_image, runtime=runtime, specs={"br2": broken})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("1 of 3 tunnels not up") and "hub-br2 (hub: " in msg, msg
    assert msg.endswith(f"its log: `vpnlab logs {name} br2`")
    assert leftovers(name) == []
