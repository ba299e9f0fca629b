"""Shared pieces of the routing-context e2e modules (one module, one lab, per method).

Every module deploys topologies/hsvpn.yml (hub + br1..br3, contexts corp/voice/guest, guest reusing
corp's addresses) with its own context_method, and runs the same behaviour checks on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

from .ipsec import UnderlayCapture

TOPO = Path(__file__).resolve().parents[2] / "topologies" / "hsvpn.yml"
BRANCHES = ("br1", "br2", "br3")
CONTEXTS = ("corp", "voice", "guest")
# host addresses of topologies/hsvpn.yml: corp 10.1.<site>.0/24, voice 10.2.<site>.0/24, guest = corp's
SITE = {"hub": 0, "br1": 1, "br2": 2, "br3": 3}
NET = {"corp": 1, "voice": 2, "guest": 1}
ONLY_IN_CORP = "10.1.2.11"  # br2-corp2: guest at br2 has no .11


def host_addr(site: str, context: str) -> str:
    return f"10.{NET[context]}.{SITE[site]}.10"


@contextmanager
def deploy_method(tmp: Path, method: str, runtime: DockerRuntime, prefix: str, *, mesh: bool = False,
                  edit: Callable[[dict[str, Any]], None] | None = None,
                  contexts: tuple[str, ...] = CONTEXTS) -> Iterator[LabCtl]:
    """Deploy hsvpn.yml with `method` (and mesh on, if asked; `edit` changes the loaded YAML) under a
    unique name, wait until `contexts` reach every branch (wait_all_contexts); its LabCtl in the
    `with` block; destroyed after, also when the wait fails."""
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
        ctl = LabCtl(runtime, name)
        wait_all_contexts(ctl, contexts=contexts)
        yield ctl
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


# --- the behaviour checks every method's module runs ---------------------------------------------


def check_every_context_reaches_every_site(ctl: LabCtl, *, branch_to_branch_all: bool = True) -> None:
    """From br1, every context reaches the hub's and br3's host in that context: both pings answered
    (branch to branch: at least one, when `branch_to_branch_all` is off, as a mesh shortcut may
    start on the first packet)."""
    for ctx in CONTEXTS:
        assert ping(ctl, f"br1-{ctx}1", host_addr("hub", ctx)) == 2, ctx
        answered = ping(ctl, f"br1-{ctx}1", host_addr("br3", ctx))
        assert (answered == 2 if branch_to_branch_all else answered >= 1), (ctx, answered)


def check_overlapping_contexts_stay_apart(ctl: LabCtl) -> None:
    assert ping(ctl, "br1-corp1", ONLY_IN_CORP) == 2
    assert ping(ctl, "br1-guest1", ONLY_IN_CORP) == 0  # the same address in guest: nobody there
    assert ping(ctl, "br1-voice1", host_addr("br2", "corp")) == 0  # voice has no route into corp


def check_full_size_tcp(ctl: LabCtl, server: str, client: str, dst: str) -> None:
    """4 MB of iperf3 TCP (full-size segments) from `client` to the iperf3 server on `server` at `dst`."""
    ctl.run(server, ["iperf3", "-s", "-1", "-D", "-p", "5299"])
    code, out = wait_for("iperf3 server", lambda: (r := ctl.run(
        client, ["iperf3", "-c", dst, "-n", "4M", "-p", "5299"]))[0] == 0 and r, 20)
    assert "receiver" in out, out


def check_underlay_shows_only_esp_in_udp(ctl: LabCtl) -> None:
    """Pings with a pattern from br2 to br1 in every context: on the underlay only IKE and
    ESP-in-UDP, and the pattern nowhere in clear."""
    pattern = "c0ffee11c0ffee11"
    with UnderlayCapture(ctl.lab) as cap:
        for ctx in CONTEXTS:
            ctl.run(f"br2-{ctx}1", ["ping", "-n", "-c", "2", "-i", "0.2", "-p", pattern, host_addr("br1", ctx)])
    try:
        assert cap.count("udp port 4500") >= 12
        other = cap.lines("not (udp port 4500 or udp port 500 or arp)")
        assert other == [], other  # nothing but IKE and ESP-in-UDP on the underlay
        assert bytes.fromhex(pattern) not in cap.raw()
    finally:
        cap.cleanup()
