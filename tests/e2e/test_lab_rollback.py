"""A deploy that fails midway, or is interrupted with Ctrl-C, leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.runtime.docker import DockerRuntime


pytestmark = pytest.mark.e2e


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "vpnlab", "deploy", str(topologies / "minimal.yml"), "--name", name],
        cwd=topologies.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not runtime.containers(name) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
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
