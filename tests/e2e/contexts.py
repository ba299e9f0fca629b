"""Shared pieces of the routing-context e2e modules (one module, one lab, per method).

Every module deploys topologies/hsvpn.yml (hub + br1..br3, contexts corp/voice/guest, guest reusing
corp's addresses) with its own context_method, and runs the same behaviour checks on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import yaml

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

TOPO = Path(__file__).resolve().parents[2] / "topologies" / "hsvpn.yml"
BRANCHES = ("br1", "br2", "br3")
CONTEXTS = ("corp", "voice", "guest")
# host addresses of topologies/hsvpn.yml: corp 10.1.<site>.0/24, voice 10.2.<site>.0/24, guest = corp's
SITE = {"hub": 0, "br1": 1, "br2": 2, "br3": 3}
NET = {"corp": 1, "voice": 2, "guest": 1}
ONLY_IN_CORP = "10.1.2.11"  # br2-corp2: guest at br2 has no .11


def host_addr(site: str, context: str) -> str:
    return f"10.{NET[context]}.{SITE[site]}.10"


def deploy_method(tmp: Path, method: str, runtime: DockerRuntime, prefix: str, *, mesh: bool = False,
                  edit: Callable[[dict[str, Any]], None] | None = None) -> Iterator[LabCtl]:
    """Deploy hsvpn.yml with `method` (and mesh on, if asked; `edit` changes the loaded YAML) under a
    unique name; yield its LabCtl; destroy it after."""
    data = yaml.safe_load(TOPO.read_text())
    data["context_method"] = method
    if mesh:
        data["defaults"] = {"mesh": {"enabled": True}}
    if edit is not None:
        edit(data)
    path = tmp / "hsvpn.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    name = f"{prefix}{uuid.uuid4().hex[:12 - len(prefix)]}"  # lab names stop at 12
    try:
        labs.deploy(path, name=name, runtime=runtime)
        yield LabCtl(runtime, name)
    finally:
        labs.destroy(name, runtime=runtime)


def ping(ctl: LabCtl, host: str, dst: str, count: int = 2) -> int:
    """How many of `count` pings from `host` to `dst` were answered."""
    _, out = ctl.run(host, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", dst])
    return out.count("bytes from")


def wait_all_contexts(ctl: LabCtl, timeout: float = 40.0, contexts: tuple[str, ...] = CONTEXTS) -> None:
    """Until every branch's host in every context answers pings from the hub's host in that context."""
    for ctx in contexts:
        for b in BRANCHES:
            wait_for(f"{ctx} hub -> {b}", lambda: ping(ctl, f"hub-{ctx}1", host_addr(b, ctx), 1) == 1, timeout)


def contexts_status(ctl: LabCtl, node: str) -> dict:
    return ctl.status(node)["services"]["contexts"]
