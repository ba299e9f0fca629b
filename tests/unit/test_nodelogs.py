"""nodelogs: `vpnlab logs LAB NODE` reads the container's output, or what a failed deploy kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpnlab import nodelogs
from vpnlab.errors import LabError
from vpnlab.runtime.base import ContainerInfo


class _Runtime:
    def __init__(self, running: dict[str, str]) -> None:
        self.running = running  # node -> its log

    def get(self, name: str) -> ContainerInfo | None:
        node = name.removeprefix("vpnlab-t-")
        if node not in self.running:
            return None
        return ContainerInfo(name, "id", "t", node, "branch", "agent", "", "running", 1)

    def containers(self, lab: str | None = None) -> list[ContainerInfo]:
        return [c for n in self.running if (c := self.get(f"vpnlab-t-{n}")) is not None]

    def logs(self, name: str, tail: int | None = 20) -> str:
        lines = self.running[name.removeprefix("vpnlab-t-")].splitlines()
        return "\n".join(lines[-tail:] if tail else lines)


@pytest.fixture(autouse=True)
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VPNLAB_LOG_DIR", str(tmp_path))
    return tmp_path


def test_a_running_node_shows_its_container_log() -> None:
    text, source = nodelogs.read("t", "b1", 1, _Runtime({"b1": "one\ntwo"}))  # type: ignore[arg-type]
    assert text == "two" and source == "container vpnlab-t-b1 (running)"


def test_a_failed_deploy_keeps_the_named_nodes_logs_and_the_next_deploy_clears_them(log_dir: Path) -> None:
    rt = _Runtime({"b1": "starting\nnot ready: waiting for interfaces lan9", "b2": "fine"})
    nodelogs.keep(rt, "t", ("b1",))  # type: ignore[arg-type]
    gone = _Runtime({})  # the rollback removed every container
    text, source = nodelogs.read("t", "b1", None, gone)  # type: ignore[arg-type]
    assert text.endswith("waiting for interfaces lan9") and "failed deploy of t" in source
    with pytest.raises(LabError, match=r"^lab t is not running; its failed deploy kept the logs of: b1$"):
        nodelogs.read("t", "b2", None, gone)  # type: ignore[arg-type]
    nodelogs.clear("t")
    with pytest.raises(LabError, match=r"^no lab t is running, and no failed deploy of it kept logs$"):
        nodelogs.read("t", "b1", None, gone)  # type: ignore[arg-type]


def test_an_unknown_node_of_a_running_lab_lists_the_nodes() -> None:
    with pytest.raises(LabError, match=r"^lab t has no node 'zz' \(nodes: b1\)$"):
        nodelogs.read("t", "zz", None, _Runtime({"b1": ""}))  # type: ignore[arg-type]
    with pytest.raises(LabError, match=r"has no node '\.\./x'"):
        nodelogs.read("t", "../x", None, _Runtime({"b1": ""}))  # type: ignore[arg-type]


def test_only_the_newest_labs_keep_their_logs(log_dir: Path) -> None:
    import os

    rt = _Runtime({"b1": "x"})
    for i in range(nodelogs.KEPT_LABS + 3):
        nodelogs.keep(rt, f"lab{i}", ())  # type: ignore[arg-type]
        os.utime(log_dir / f"lab{i}", (i, i))  # mtimes in deploy order, whatever the clock's resolution
    nodelogs.keep(rt, "last", ())  # type: ignore[arg-type]
    left = sorted(d.name for d in log_dir.iterdir())
    assert len(left) == nodelogs.KEPT_LABS and "last" in left and "lab0" not in left and "lab3" not in left
    assert f"lab{nodelogs.KEPT_LABS + 2}" in left
