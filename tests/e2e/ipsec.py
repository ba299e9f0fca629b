"""Helpers for the IPsec end-to-end tests: agent status, waiting for SAs, underlay captures, the
engine this kernel gets, addresses from the loaded lab."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.topology.model import Lab


@functools.cache
def expected_engine() -> str:
    """The data plane an agent on `dataplane: auto` picks on this kernel: the agent's own ESP probe,
    run in a throwaway network namespace (containers share the host's kernel)."""
    done = subprocess.run(["unshare", "--net", sys.executable, "-m", "vpnlab_agent.dataplane.probe"],
                          capture_output=True, text=True, timeout=30, check=True)
    return "xfrm" if json.loads(done.stdout)["error"] is None else "userspace"


def host_addresses(lab: Lab) -> dict[str, str]:
    """{router: address of its first host ROUTER-h1} for every router that has one, from the loaded lab."""
    names = {n.name for n in lab.hosts}
    return {r.name: str(lab.node(f"{r.name}-h1").interfaces[0].address.ip)
            for r in lab.routers if f"{r.name}-h1" in names}


def run(runtime: DockerRuntime, lab: str, node: str, argv: list[str]) -> tuple[int, str]:
    return LabCtl(runtime, lab).run(node, argv)


def status(runtime: DockerRuntime, lab: str, node: str) -> dict[str, Any]:
    return LabCtl(runtime, lab).status(node)


def wait_for_children(runtime: DockerRuntime, lab: str, node: str, count: int, timeout: float = 40.0) -> dict[str, Any]:
    """The node's status once it has `count` child SAs and at least one IKE SA."""

    def enough() -> dict[str, Any] | None:
        state = status(runtime, lab, node)
        return state if len(state.get("child_sas", [])) >= count and state.get("ike_sas") else None

    return wait_for(f"{count} child SA(s) at {node}", enough, timeout, interval=0.5)


def child_for(state: dict[str, Any], peer: str) -> dict[str, Any]:
    children = [c for c in state["child_sas"] if c["peer"] == peer]
    assert children, f"{state['node']}: no child SA with {peer}: {state['child_sas']}"
    return max(children, key=lambda c: c.get("bytes_in", 0) + c.get("bytes_out", 0))


def packets(state: dict[str, Any], peer: str, direction: str) -> int:
    """All packets one way over every child SA with `peer` (rekeys leave more than one)."""
    return sum(c[f"packets_{direction}"] for c in state["child_sas"] if c["peer"] == peer)


class UnderlayCapture:
    """tcpdump on the lab's emulated internet (the `inet` bridge in the fabric namespace)."""

    def __init__(self, lab: str, bpf: str = "") -> None:
        self.lab, self.bpf = lab, bpf
        self.path = Path(tempfile.mkdtemp(prefix="vpnlab-cap-")) / "inet.pcap"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> UnderlayCapture:
        argv = ["ip", "netns", "exec", f"vpnlab-{self.lab}", "tcpdump", "--immediate-mode", "-U", "-s", "0", "-i", "inet", "-w", str(self.path)]
        self.proc = subprocess.Popen(argv + ([self.bpf] if self.bpf else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()  # capturing before the caller sends anything
        assert "listening on" in line, f"tcpdump did not start: {line}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.5)  # let the last packets reach the file before tcpdump stops
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)

    def raw(self) -> bytes:
        return self.path.read_bytes()

    def count(self, bpf: str) -> int:
        return len(self.lines(bpf))

    def lines(self, bpf: str) -> list[str]:
        """tcpdump's one line per captured packet that matches `bpf` (for assertion messages too)."""
        out = subprocess.run(["tcpdump", "-nr", str(self.path), bpf], capture_output=True, text=True, timeout=30)
        return [line for line in out.stdout.splitlines() if line.strip()]

    def cleanup(self) -> None:
        if self.path.exists():
            os.unlink(self.path)
        os.rmdir(self.path.parent)
