"""Routing contexts, method hsvpn, against peers that do not play by the map: a branch that sends
tags it was not given (forged: a context the hub has but did not negotiate with it; unknown: a
tag nobody has), and a strongSwan branch without contexts in the same lab (docs/hsvpn.md,
"strongSwan": a strongSwan node cannot have contexts; one without keeps its plain LAN working).

One lab for the module: topologies/hsvpn.yml with voice taken off br3 (br3's SA carries corp and
guest only), plus br4 (strongSwan) and br5 (our agent), each with a plain LAN and no contexts.
The forged tags come from br3's own agent through `ctl retag`, a fault injection that changes only
what br3 sends: the hub's checks are what is tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from vpnlab.measure.labctl import LabCtl
from vpnlab.runtime.docker import DockerRuntime

from .contexts import contexts_status, deploy_method, host_addr, ping

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _edit(data: dict[str, Any]) -> None:
    nodes = data["nodes"]
    nodes["br3"]["contexts"] = [c for c in nodes["br3"]["contexts"] if c["name"] != "voice"]
    nodes["br4"] = {"role": "branch", "implementation": "strongswan", "lan": "10.9.4.0/24", "hosts": 1}
    nodes["br5"] = {"role": "branch", "lan": "10.9.5.0/24", "hosts": 1}


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    with deploy_method(tmp_path_factory.mktemp("hsvpnpeers"), "hsvpn", runtime, "hsvpnq", edit=_edit,
                       contexts=("corp", "guest")) as ctl:
        yield ctl


def retag(ctl: LabCtl, node: str, peer: str, context: str, tag: int) -> dict[str, Any]:
    code, out = ctl.run(node, ["python3", "-m", "vpnlab_agent", "ctl", "retag", peer, context, str(tag)])
    assert code == 0, out
    return json.loads(out)


def hub_drops(ctl: LabCtl) -> tuple[int, dict[str, int]]:
    """The hub engine's tag_dropped, and per context what br3's SA dropped there."""
    st = contexts_status(ctl, "hub")
    per = {c["name"]: s["tag_dropped"] for c in st["contexts"] for s in c["sas"] if s["peer"] == "br3"}
    return st["drops"]["tag_dropped"], per


def host_ip(ctl: LabCtl, host: str) -> str:
    _, out = ctl.run(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
    return out.split()[3].split("/")[0]


@pytest.mark.parametrize(("tag", "what"), [(2, "forged"), (77, "unknown")])
def test_hsvpn_forged_and_unknown_tags_are_dropped_and_counted(ctl: LabCtl, tag: int, what: str) -> None:
    dst = host_addr("hub", "corp")
    assert ping(ctl, "br3-corp1", dst) == 2
    before, _ = hub_drops(ctl)
    # tag 2 is voice: the hub has it, br3's SA does not (forged); 77 is nobody's (unknown)
    assert retag(ctl, "br3", "hub", "corp", tag)["sas"] == 1
    try:
        assert ping(ctl, "br3-corp1", dst, 3) == 0, what  # never delivered, in corp or elsewhere
        after, per_sa = hub_drops(ctl)
        assert after - before >= 3, (what, before, after)
        assert per_sa and all(v >= 3 for v in per_sa.values()), per_sa  # counted on br3's SA
    finally:
        retag(ctl, "br3", "hub", "corp", 1)
    assert ping(ctl, "br3-corp1", dst) == 2  # the negotiated tag again: it was the tag, nothing else


def test_hsvpn_retag_refuses_a_context_the_router_lacks(ctl: LabCtl) -> None:
    code, out = ctl.run("br3", ["python3", "-m", "vpnlab_agent", "ctl", "retag", "hub", "voice", "2"])
    assert code == 1 and "no context 'voice' here" in out, out


def test_hsvpn_lab_strongswan_branch_keeps_its_plain_lan(ctl: LabCtl) -> None:
    assert ctl.status("br4")["implementation"] == "strongswan"
    br5 = host_ip(ctl, "br5-h1")
    assert ping(ctl, "br4-h1", br5) == 2  # strongSwan branch -> agent branch, plain, via the hub
    assert ping(ctl, "br5-h1", host_ip(ctl, "br4-h1")) == 2
    # plain LANs and contexts stay apart: the hub's corp host is in no table they reach
    assert ping(ctl, "br4-h1", host_addr("hub", "corp")) == 0
    assert ping(ctl, "hub-corp1", br5) == 0
