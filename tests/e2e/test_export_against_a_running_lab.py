"""What an exported containerlab file relies on, checked against a lab the Docker runtime runs: the
bound node.json is the file vpnlab puts into the container, and the healthcheck command reports ready
exactly where an agent is ready. (containerlab itself cannot be installed here.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from vpnlab import lab as labs
from vpnlab.export import containerlab as clab
from vpnlab.runtime.docker import DockerRuntime

pytestmark = pytest.mark.e2e


def test_exported_files_and_healthcheck_match_the_running_lab(
    node_image: str, runtime: DockerRuntime, lab_name: Callable[[], str], topologies: Path
) -> None:
    name = lab_name()
    labs.deploy(topologies / "minimal.yml", name=name, runtime=runtime)
    lab = labs.load_lab(topologies / "minimal.yml", name)
    export = clab.export_lab(lab, node_image)
    (single,) = export.files
    nodes = single.topology["topology"]["nodes"]
    for node in lab.nodes:
        container = f"vpnlab-{name}-{node.name}"
        check = nodes[node.name].get("healthcheck")
        if not node.is_router:
            assert check is None
            continue
        shown = runtime.exec_capture(container, ["cat", "/etc/vpnlab/node.json"])
        assert shown.exit_code == 0 and shown.stdout == single.files[PurePosixPath(f"files/{node.name}/etc/vpnlab/node.json")]
        kind, command = check["test"]
        assert kind == "CMD-SHELL"  # Docker runs it with /bin/sh -c
        assert runtime.exec_capture(container, ["/bin/sh", "-c", command]).exit_code == 0, node.name
    host = f"vpnlab-{name}-{lab.hosts[0].name}"  # no agent there: the same check must fail
    assert runtime.exec_capture(host, ["/bin/sh", "-c", clab.READY_CHECK]).exit_code != 0
