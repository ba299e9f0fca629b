"""End-to-end fixtures: the real Docker engine, the real node image, labs that clean up after
themselves. Every test deploys its own lab under a unique name and destroys it in a finaliser."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from vpnlab import lab as labs
from vpnlab.net.namespace import netns_exists
from vpnlab.runtime.base import LABEL_LAB
from vpnlab.runtime.docker import DockerRuntime

REPO = Path(__file__).resolve().parents[2]
TOPOLOGIES = REPO / "topologies"


@pytest.fixture(scope="session")
def runtime() -> DockerRuntime:
    from vpnlab.environment import check_docker
    from vpnlab.errors import EnvironmentProblem

    try:
        check_docker()
    except EnvironmentProblem as exc:
        pytest.skip(f"no Docker engine: {exc}")
    return DockerRuntime()


@pytest.fixture(scope="session")
def node_image(runtime: DockerRuntime) -> str:
    from vpnlab.image import ensure_image

    return ensure_image()


def unique_name(prefix: str = "e") -> str:
    return f"{prefix}{uuid.uuid4().hex[:7]}"  # lab names stop at 12 characters


@pytest.fixture
def lab_name(request: pytest.FixtureRequest, runtime: DockerRuntime) -> Callable[[], str]:
    """Hands out unique lab names, each destroyed when the test ends, pass or fail."""

    def make() -> str:
        name = unique_name()
        request.addfinalizer(lambda: labs.destroy(name, runtime=runtime))
        return name

    return make


def _leftovers(name: str, runtime: DockerRuntime) -> list[str]:
    """Everything of lab `name` that is still on this machine; [] after a clean destroy."""
    found = [f"container {c.name}" for c in runtime.containers(name)]
    found += [
        f"container {c['Names'][0]} (by label)"
        for c in runtime.client.api.containers(all=True, filters={"label": f"{LABEL_LAB}={name}"})
    ]
    if netns_exists(f"vpnlab-{name}"):
        found.append(f"netns vpnlab-{name}")
    with IPRoute() as ipr:
        for link in ipr.get_links():
            text = f"{link.get_attr('IFLA_IFNAME')} {link.get_attr('IFLA_IFALIAS') or ''}"
            if name in text:
                found.append(f"host link {text.strip()}")
    for cmd in (["iptables-save"], ["nft", "list", "ruleset"]):
        try:
            rules = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
        except FileNotFoundError:
            continue
        found += [f"{cmd[0]}: {line.strip()}" for line in rules.splitlines() if name in line]
    return found


def _ping(runtime: DockerRuntime, lab: str, node: str, address: str) -> tuple[bool, str]:
    """Real ICMP echo from inside a node (iputils ping in the image); True if any reply came."""
    result = runtime.exec_capture(f"vpnlab-{lab}-{node}", ["ping", "-c", "3", "-i", "0.2", "-W", "2", str(address)])
    return result.exit_code == 0, (result.stdout + result.stderr).decode(errors="replace")


@pytest.fixture(scope="session")
def topologies() -> Path:
    return TOPOLOGIES


@pytest.fixture
def leftovers(runtime: DockerRuntime) -> Callable[[str], list[str]]:
    """leftovers(lab) -> what of that lab is still on this machine ([] after a clean destroy)."""
    return lambda name: _leftovers(name, runtime)


@pytest.fixture
def ping(runtime: DockerRuntime) -> Callable[[str, str, str], tuple[bool, str]]:
    """ping(lab, node, address) -> (any reply?, ping's output)."""
    return lambda lab, node, address: _ping(runtime, lab, node, address)
