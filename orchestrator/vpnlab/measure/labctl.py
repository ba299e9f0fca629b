"""Small handles on a running lab for measurements and end-to-end checks: agent status, commands
in a node, waiting for a condition. No printing."""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from vpnlab import lab as labs
from vpnlab.errors import LabError
from vpnlab.measure.report import mesh_of
from vpnlab.runtime.base import Runtime

T = TypeVar("T")


def tcp_listening(proc_net_tcp: str, port: int) -> bool:
    """Whether /proc/net/tcp (or tcp6) text shows a socket listening on port."""
    want = f":{port:04X}"
    return any(len(f) > 3 and f[1].endswith(want) and f[3] == "0A"  # 0A: TCP_LISTEN
               for f in (line.split() for line in proc_net_tcp.splitlines()))


class LabCtl:
    def __init__(self, rt: Runtime, lab: str) -> None:
        self.rt, self.lab = rt, lab

    def cname(self, node: str) -> str:
        return f"vpnlab-{self.lab}-{node}"

    def status(self, node: str) -> dict[str, Any]:
        info = self.rt.get(self.cname(node))
        if info is None:
            raise LabError(f"no container {self.cname(node)}")
        return labs.agent_status(info)

    def mesh(self, node: str) -> dict[str, Any]:
        return mesh_of(self.status(node))

    def run(self, node: str, argv: list[str]) -> tuple[int, str]:
        r = self.rt.exec_capture(self.cname(node), argv)
        return r.exit_code, (r.stdout + r.stderr).decode(errors="replace")

    def listening(self, node: str, port: int) -> bool:
        """Whether a TCP socket in the node listens on port."""
        return tcp_listening(self.run(node, ["cat", "/proc/net/tcp", "/proc/net/tcp6"])[1], port)

    def start_iperf3_server(self, node: str, port: int = 5201, bind: str | None = None, timeout: float = 10.0) -> None:
        """A one-shot daemonised iperf3 server, returned once it listens (not after a guessed sleep)."""
        argv = ["iperf3", "-s", "-1", "-D", "-p", str(port)] + (["-B", bind] if bind else [])
        code, out = self.run(node, argv)
        if code != 0:
            raise LabError(f"iperf3 server in {node}: {out.strip()}")
        wait_for(f"iperf3 in {node} to listen on port {port}", lambda: self.listening(node, port), timeout, 0.05)

    def shortcuts(self, node: str) -> dict[str, str]:
        """{peer: state} of the router's shortcuts."""
        return {s["peer"]: s["state"] for s in self.mesh(node).get("shortcuts", []) if s.get("peer")}

    def ike_peers(self, node: str) -> list[str]:
        return [s["peer"] for s in self.status(node).get("ike_sas", []) if s.get("state") == "established"]


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """fn's first truthy result, polling; LabError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@contextmanager
def temporary_lab(rt: Runtime, topology: str, prefix: str) -> Iterator[LabCtl]:
    """Deploy `topology` (YAML text) under a unique name starting with `prefix`; destroyed after."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "lab.yml"
        path.write_text(topology)
        try:
            labs.deploy(path, name=name, runtime=rt)
            yield LabCtl(rt, name)
        finally:
            labs.destroy(name, runtime=rt)
