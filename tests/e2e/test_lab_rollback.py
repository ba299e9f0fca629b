"""A deploy that fails midway, or is interrupted with Ctrl-C, leaves nothing behind."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from vpnlab_agent.config import CONFIG_PATH, InterfaceConfig, NodeConfig

from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.kinds.base import ContainerSpec
from vpnlab.kinds.registry import kind_for
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.topology.model import Lab


pytestmark = pytest.mark.e2e


def _deploy_in_background(runtime: DockerRuntime, topologies: Path, name: str, containers: int) -> subprocess.Popen[str]:
    """`vpnlab deploy minimal.yml` as a user runs it, returned once `containers` of its containers
    exist (or it has ended, or 120 s have passed), so that a test can interrupt it mid-deploy."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vpnlab", "deploy", str(topologies / "minimal.yml"), "--name", name],
        cwd=topologies.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while len(runtime.containers(name)) < containers and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def test_a_node_that_cannot_start_rolls_the_whole_lab_back(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
) -> None:
    # A real conflict: a container that is not part of any lab already holds br2's name, so
    # Docker refuses br2 after other nodes have started and the fabric exists.
    name = lab_name()
    squatter = runtime.client.containers.create(node_image, ["sleep", "infinity"], name=f"vpnlab-{name}-br2")
    try:
        with pytest.raises(LabError, match="br2"):
            labs.deploy(topologies / "minimal.yml", name=name, runtime=runtime)
        assert leftovers(name) == []
        squatter.reload()  # what the lab did not create, it did not remove
    finally:
        squatter.remove(force=True)


def test_ctrl_c_during_deploy_leaves_nothing(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
) -> None:
    name = lab_name()
    proc = _deploy_in_background(runtime, topologies, name, containers=1)
    try:
        assert proc.poll() is None, f"deploy ended before any container appeared: {proc.communicate()}"
        assert runtime.containers(name), "no container appeared within 120 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert leftovers(name) == []


def _router_spec(lab: Lab, node: str, **changes: object) -> ContainerSpec:
    base = kind_for(lab.node(node)).container_spec(lab, lab.node(node))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_an_agent_that_never_becomes_ready_fails_the_deploy_by_name_and_leaves_nothing(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
) -> None:
    # br2's agent is told to configure an interface the lab never wires: it keeps waiting and
    # answers "not ready", so the deploy must give up at its deadline and name br2.
    name = lab_name()
    lab = labs.load_lab(topologies / "minimal.yml", name)
    spec = _router_spec(lab, "br2")
    config = NodeConfig.from_json(spec.files[CONFIG_PATH].decode())
    extra = InterfaceConfig(name="lan9", kind="lan", addresses=("10.99.0.1/24",))
    config = dataclasses.replace(config, interfaces=(*config.interfaces, extra))
    broken = dataclasses.replace(spec, files={**spec.files, CONFIG_PATH: config.to_json().encode()})
    with pytest.raises(LabError, match=r"node br2 not ready after 8 s \(waiting for interfaces .*lan9\)") as err:
        labs.deploy_lab(lab, node_image, runtime=runtime, ready_timeout=8, specs={"br2": broken})
    assert "\n" not in str(err.value) and str(err.value).endswith(f"its log: `vpnlab logs {name} br2`")
    assert leftovers(name) == []
    text, source = labs.node_logs(name, "br2")  # the rollback removed the container, not its log
    assert "waiting for interfaces" in text and "failed deploy" in source


def test_an_agent_that_exits_fails_the_deploy_at_once_with_its_log(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
) -> None:
    name = lab_name()
    lab = labs.load_lab(topologies / "minimal.yml", name)
    # --wait 0: the agent waits that long for its config to appear (the runtime writes it after start)
    broken = _router_spec(lab, "hub", command=("python3", "-m", "vpnlab_agent", "run", "--config", "/nonexistent.json",
                                               "--wait", "0"))
    started = time.monotonic()
    with pytest.raises(LabError, match=rf"node hub failed: container vpnlab-{name}-hub (is exited|stopped right after "
                                       rf"start) \(last line: .+\); its log: `vpnlab logs {name} hub`$") as err:
        labs.deploy_lab(lab, node_image, runtime=runtime, ready_timeout=60, specs={"hub": broken})
    assert time.monotonic() - started < 30, "a dead agent must not wait for the deadline"
    assert "nonexistent" in str(err.value)
    assert leftovers(name) == []


def test_destroy_cleans_up_after_a_deploy_that_was_killed(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
) -> None:
    # SIGKILL leaves no chance to roll back: the labels and the netns name are all destroy needs.
    name = lab_name()
    proc = _deploy_in_background(runtime, topologies, name, containers=2)
    proc.kill()
    proc.communicate()
    assert leftovers(name), "the killed deploy should have left containers and a fabric behind"
    result = labs.destroy(name, runtime=runtime)
    assert result.found_anything
    assert leftovers(name) == []
