"""What lab.py needs from a container runtime, and the labels every lab container carries.

The labels are the lab's whole state: destroy and inspect find everything from them, so nothing
has to be remembered on disk and a crashed deploy can still be cleaned up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from vpnlab.kinds.base import ContainerSpec

if TYPE_CHECKING:
    from vpnlab.topology.model import Lab, Node

LABEL_LAB = "vpnlab.lab"
LABEL_NODE = "vpnlab.node"
LABEL_ROLE = "vpnlab.role"
LABEL_KIND = "vpnlab.kind"
LABEL_TOPOLOGY = "vpnlab.topology"


def container_name(lab: str, node: str) -> str:
    return f"vpnlab-{lab}-{node}"


def node_labels(lab: Lab, node: Node) -> dict[str, str]:
    """The labels of one node's container, whichever runtime starts it (Docker, containerlab)."""
    return {
        LABEL_LAB: lab.name,
        LABEL_NODE: node.name,
        LABEL_ROLE: node.role,
        LABEL_KIND: node.implementation,  # "host" for end hosts: inspect asks only the others for status
        LABEL_TOPOLOGY: str(Path(lab.source).resolve()) if str(lab.source) else "",
    }


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str
    lab: str
    node: str
    role: str
    kind: str
    topology: str
    state: str  # Docker's: created, running, exited, ...
    pid: int  # 0 when not running

    @property
    def netns_path(self) -> str:
        return f"/proc/{self.pid}/ns/net"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class Runtime(Protocol):
    def start(self, name: str, image: str, spec: ContainerSpec, labels: dict[str, str]) -> ContainerInfo:
        """Create and start the container with spec.files in it (in order: see ContainerSpec.files);
        return it running (pid known)."""
        ...

    def containers(self, lab: str | None = None) -> list[ContainerInfo]:
        """Every vpnlab container (of one lab when `lab` is given), found by label."""
        ...

    def get(self, name: str) -> ContainerInfo | None: ...

    def remove(self, name: str) -> None:
        """Force-remove; no error when it is already gone."""
        ...

    def stop(self, name: str, timeout: int) -> None:
        """Stop a container (SIGTERM, then SIGKILL after `timeout` s); it keeps its filesystem."""
        ...

    def start_existing(self, name: str) -> ContainerInfo:
        """Start a stopped container again; return it running (pid known)."""
        ...

    def labels(self, name: str) -> dict[str, str]: ...

    def exec_capture(self, name: str, argv: list[str]) -> ExecResult: ...

    def exec_stream(self, name: str, argv: list[str], stdout: BinaryIO, stderr: BinaryIO) -> int: ...

    def exec_interactive(self, name: str, argv: list[str]) -> int:
        """Run argv on the caller's terminal (stdin, tty), for shells; returns the exit code."""
        ...

    def logs(self, name: str, tail: int | None = 20) -> str:
        """The container's output (stdout and stderr), its last `tail` lines; None: all of it."""
        ...
