"""Helpers for the IPsec end-to-end tests: agent status, waiting for SAs, underlay captures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from vpnlab.runtime.docker import DockerRuntime


def container(lab: str, node: str) -> str:
    return f"vpnlab-{lab}-{node}"


def run(runtime: DockerRuntime, lab: str, node: str, argv: list[str]) -> tuple[int, str]:
    result = runtime.exec_capture(container(lab, node), argv)
    return result.exit_code, (result.stdout + result.stderr).decode(errors="replace")


def status(runtime: DockerRuntime, lab: str, node: str) -> dict[str, Any]:
    code, out = run(runtime, lab, node, ["python3", "-m", "vpnlab_agent", "ctl", "status"])
    assert code == 0, f"{node}: ctl status failed: {out}"
    return json.loads(out)


def wait_for_children(runtime: DockerRuntime, lab: str, node: str, count: int, timeout: float = 40.0) -> dict[str, Any]:
    """Poll the node's status until it has `count` child SAs (and as many established IKE SAs)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = status(runtime, lab, node)
        if len(last.get("child_sas", [])) >= count and len(last.get("ike_sas", [])) >= 1:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{node}: {count} child SAs not up after {timeout:.0f} s: {json.dumps(last)[:1500]}")


def child_for(state: dict[str, Any], peer: str) -> dict[str, Any]:
    children = [c for c in state["child_sas"] if c["peer"] == peer]
    assert children, f"{state['node']}: no child SA with {peer}: {state['child_sas']}"
    return max(children, key=lambda c: c.get("bytes_in", 0) + c.get("bytes_out", 0))


def packets(state: dict[str, Any], peer: str, direction: str) -> int:
    """All packets one way over every child SA with `peer` (rekeys leave more than one)."""
    return sum(c[f"packets_{direction}"] for c in state["child_sas"] if c["peer"] == peer)


class UnderlayCapture:
    """tcpdump on the lab's emulated internet (the `inet` bridge in the fabric namespace)."""

    def __init__(self, lab: str) -> None:
        self.lab = lab
        self.path = Path(tempfile.mkdtemp(prefix="vpnlab-cap-")) / "inet.pcap"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> UnderlayCapture:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", f"vpnlab-{self.lab}", "tcpdump", "--immediate-mode", "-U", "-s", "0", "-i", "inet", "-w", str(self.path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not (self.path.exists() and self.path.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.1)  # the pcap header is written once tcpdump listens
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.5)  # let the last packets reach the file before tcpdump stops
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)

    def raw(self) -> bytes:
        return self.path.read_bytes()

    def count(self, bpf: str) -> int:
        out = subprocess.run(["tcpdump", "-nr", str(self.path), bpf], capture_output=True, text=True, timeout=30)
        return len([line for line in out.stdout.splitlines() if line.strip()])

    def cleanup(self) -> None:
        if self.path.exists():
            os.unlink(self.path)
        os.rmdir(self.path.parent)
