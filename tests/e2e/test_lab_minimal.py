"""The minimal lab (1 hub + 2 branches + 1 host per LAN) on the real engine: deploy, reach,
inspect, exec, destroy without leftovers. No IPsec yet: routers meet on the underlay only."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from itertools import permutations

import pytest
from typer.testing import CliRunner

from vpnlab import lab as labs
from vpnlab.cli import app
from vpnlab.runtime.docker import DockerRuntime


pytestmark = pytest.mark.e2e


def test_minimal_lab_end_to_end(
    node_image: str,
    runtime: DockerRuntime,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
    ping: Callable[[str, str, str], tuple[bool, str]],
) -> None:
    name = lab_name()
    result = labs.deploy(topologies / "minimal.yml", name=name, runtime=runtime)
    assert result.containers == 6
    lab = labs.load_lab(topologies / "minimal.yml", name)

    failures = []
    for host in lab.hosts:  # every host reaches its router
        ok, out = ping(name, host.name, str(host.gateway))
        if not ok:
            failures.append(f"{host.name} -> {host.router} {host.gateway}: {out}")
    for a, b in permutations(lab.routers, 2):  # routers reach each other across the underlay
        ok, out = ping(name, a.name, str(b.public_address))
        if not ok:
            failures.append(f"{a.name} -> {b.name} {b.public_address}: {out}")
    assert not failures, "\n".join(failures)

    view = labs.inspect_lab(name, runtime=runtime)
    assert sorted(n.name for n in view.nodes) == sorted(n.name for n in lab.nodes)
    assert all(n.up for n in view.nodes), [(n.name, n.state, n.problem) for n in view.nodes if not n.up]
    for node in view.nodes:
        expected = {i.name: [str(i.address)] for i in lab.node(node.name).interfaces}
        assert {k: v for k, v in node.addresses.items() if k in expected} == expected, node.name
        if node.kind != "host":
            assert node.agent and node.agent["node"] == node.name and "dataplane" in node.agent

    cli = CliRunner()
    shown = cli.invoke(app, ["inspect", name, "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["name"] == name and all(n["up"] for n in data["nodes"]) and len(data["nodes"]) == 6
    listed = cli.invoke(app, ["inspect", "--json"])
    assert name in [lab_["name"] for lab_ in json.loads(listed.stdout)["labs"]]

    out, err = io.BytesIO(), io.BytesIO()
    code = labs.exec_node(name, "br1-h1", ["sh", "-c", "hostname; echo oops >&2; exit 3"], out, err, runtime=runtime)
    assert (code, out.getvalue(), err.getvalue()) == (3, b"br1-h1\n", b"oops\n")

    gone = labs.destroy(name, runtime=runtime)
    assert gone.containers_removed == 6 and gone.netns_removed
    assert leftovers(name) == []
    again = labs.destroy(name, runtime=runtime)
    assert not again.found_anything
