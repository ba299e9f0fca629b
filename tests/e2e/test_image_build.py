"""The node image builds from Debian packages and runs the agent's imports."""

from __future__ import annotations

import subprocess

import pytest

from vpnlab import image

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node_image() -> str:
    return image.ensure_image()


def test_agent_imports_in_the_node_image(node_image: str) -> None:
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", node_image, "python3", "-c",
         "import vpnlab_agent, cryptography, pyroute2, jinja2; print(cryptography.__version__)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("38.")


def test_image_tools_present(node_image: str) -> None:
    tools = "ip ping iperf3 tcpdump nft iptables conntrack keepalived swanctl charon-systemd ps"
    script = f"for t in {tools}; do command -v $t >/dev/null || echo missing $t; done; " \
             "test -f /usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so || echo missing libipsec"
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", node_image, "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_second_call_reuses_the_image_and_labels_are_set(node_image: str) -> None:
    import docker

    client = docker.from_env()
    before = client.images.get(node_image).id
    assert image.ensure_image() == node_image
    assert client.images.get(node_image).id == before
    assert client.images.get(node_image).labels.get("vpnlab.image") == "node"
    assert client.images.get(image.base_tag()).labels.get("vpnlab.image") == "base"
