"""lab.deploy's order of checks, with the environment and the image replaced (no Docker, no root)."""

from __future__ import annotations

import pytest

from vpnlab import environment, image
from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.runtime.base import ContainerInfo


class _OneLabRuntime:
    """Just enough runtime for deploy() to find that lab `name` already has a container."""

    def __init__(self, name: str) -> None:
        self.name = name

    def containers(self, lab: str | None = None) -> list[ContainerInfo]:
        if lab not in (None, self.name):
            return []
        return [ContainerInfo(f"vpnlab-{self.name}-hub", "id", self.name, "hub", "hub", "agent", "", "running", 1)]


def test_an_existing_lab_is_refused_before_the_image_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "check_privileges", lambda: None)
    monkeypatch.setattr(environment, "check_docker", lambda: None)

    def ensure_image(**_: object) -> str:
        raise AssertionError("the image was built for a lab that exists already")

    monkeypatch.setattr(image, "ensure_image", ensure_image)
    with pytest.raises(LabError, match="lab rvotest already exists"):
        labs.deploy("topologies/minimal.yml", name="rvotest", runtime=_OneLabRuntime("rvotest"))  # type: ignore[arg-type]


def test_labs_deployed_from_a_file_are_found_by_its_resolved_path() -> None:
    from pathlib import Path

    source = str(Path("topologies/minimal.yml").resolve())

    class _Runtime:
        def containers(self, lab: str | None = None) -> list[ContainerInfo]:
            return [
                ContainerInfo("vpnlab-a-hub", "1", "a", "hub", "hub", "agent", source, "running", 1),
                ContainerInfo("vpnlab-a-br1", "2", "a", "br1", "branch", "agent", source, "running", 2),
                ContainerInfo("vpnlab-b-hub", "3", "b", "hub", "hub", "agent", "/elsewhere.yml", "running", 3),
            ]

    assert labs.labs_deployed_from("topologies/minimal.yml", runtime=_Runtime()) == ["a"]  # type: ignore[arg-type]


def test_exec_never_sends_a_name_no_topology_allows_to_the_engine() -> None:
    asked: list[str] = []

    class _Runtime(_OneLabRuntime):
        def get(self, name: str) -> ContainerInfo | None:
            asked.append(name)
            return None

    for node in ("../../containers/json", "a/b", "BR1", ""):
        with pytest.raises(LabError, match=r"lab rvotest has no node .* \(nodes: hub\)"):
            labs.exec_node("rvotest", node, ["true"], None, None, runtime=_Runtime("rvotest"))  # type: ignore[arg-type]
    assert asked == []
