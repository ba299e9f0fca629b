"""Two labs from one topology side by side: same addresses, separate fabrics; destroying one
leaves the other working."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.runtime.docker import DockerRuntime


pytestmark = pytest.mark.e2e


def test_two_labs_at_once(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
    ping: Callable[[str, str, str], tuple[bool, str]],
) -> None:
    first, second = lab_name(), lab_name()
    labs.deploy(topologies / "minimal.yml", name=first, runtime=runtime)
    labs.deploy(topologies / "minimal.yml", name=second, runtime=runtime)
    lab = labs.load_lab(topologies / "minimal.yml")
    hub = lab.node("hub")
    for name in (first, second):
        assert ping(name, "br1", str(hub.public_address))[0], name
        assert ping(name, "br2-h1", str(lab.node("br2-h1").gateway))[0], name
    # Same addresses in both labs; the fabrics keep them apart, so each ARP reply comes from its own lab.
    macs = set()
    for name in (first, second):
        out = runtime.exec_capture(f"vpnlab-{name}-br1", ["ip", "neigh", "show", str(hub.public_address)])
        macs.add(out.stdout.split(b"lladdr")[1].split()[0] if b"lladdr" in out.stdout else b"")
    assert len(macs) == 2 and b"" not in macs

    assert {lab_.name for lab_ in labs.list_labs(runtime=runtime)} >= {first, second}
    labs.destroy(first, runtime=runtime)
    assert leftovers(first) == []
    assert all(c.state == "running" for c in runtime.containers(second))
    assert len(runtime.containers(second)) == 6
    assert ping(second, "br1", str(hub.public_address))[0]
    assert all(n.up for n in labs.inspect_lab(second, runtime=runtime).nodes)
