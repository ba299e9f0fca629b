"""NAT mappings and hub outages on real containers, one lab for the module:
- two branches behind one NAT device with a 10 s mapping timeout (room for a slow machine's
  docker exec between the checks), one sending NAT keepalives every 2 s and one sending none
  (and no DPD for either): idle, the silent one's mapping expires and the hub can no longer
  reach in; the other's outlives the timeout and keeps the tunnel usable;
- two branches on two hubs: the hub carrying their traffic is killed, the traffic moves to the
  surviving hub, and when the killed hub is started again both branches are back on both hubs;
- a busy tunnel sends no DPD checks (inbound ESP proves the peer alive), an idle one goes on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab import lifecycle
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

from .ipsec import UnderlayCapture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

LAB = """\
name: natfo
secret: {psk: "nat-failover-psk"}
nodes:
  h1: {role: hub, lan: 10.0.0.0/24, hosts: 1, crypto: {dpd_interval: 300}}
  h2: {role: hub, lan: 10.9.0.0/24, crypto: {dpd_interval: 300}}
  cpe: {role: nat, type: endpoint-independent, mapping_timeout: 10}
  ka: {role: branch, hubs: [h1], nat: cpe, lan: 10.1.0.0/24, hosts: 1, crypto: {nat_keepalive: 2, dpd_interval: 300}}
  noka: {role: branch, hubs: [h1], nat: cpe, lan: 10.2.0.0/24, hosts: 1, crypto: {nat_keepalive: 0, dpd_interval: 300}}
  d: {role: branch, hubs: [h1, h2], lan: 10.3.0.0/24, hosts: 1, crypto: {dpd_interval: 2}}
  e: {role: branch, hubs: [h1, h2], lan: 10.4.0.0/24, hosts: 1, crypto: {dpd_interval: 2}}
"""
HOSTS = {"h1": "10.0.0.10", "ka": "10.1.0.10", "noka": "10.2.0.10", "d": "10.3.0.10", "e": "10.4.0.10"}
INSIDE = {"ka": "100.64.0.10", "noka": "100.64.0.11"}
HUBS = ("h1", "h2")


def all_up(ctl: LabCtl) -> bool:
    return all("h1" in ctl.ike_peers(b) for b in ("ka", "noka")) and all(
        set(HUBS) <= set(ctl.ike_peers(b)) for b in ("d", "e"))


@pytest.fixture(scope="module")
def lab(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LabCtl]]:
    name = f"nfo{uuid.uuid4().hex[:6]}"
    path: Path = tmp_path_factory.mktemp("natfo") / "natfo.yml"
    path.write_text(LAB)
    try:
        labs.deploy(path, name=name, runtime=runtime)
        c = LabCtl(runtime, name)
        wait_for("every branch's IKE SAs", lambda: all_up(c), 60)
        yield name, c
    finally:
        labs.destroy(name, runtime=runtime)


def reaches(ctl: LabCtl, src: str, dst: str) -> bool:
    code, _ = ctl.run(f"{src}-h1", ["ping", "-n", "-c", "1", "-W", "2", HOSTS[dst]])
    return code == 0


def mapping(ctl: LabCtl, branch: str) -> dict | None:  # type: ignore[type-arg]
    """The NAT device's live mapping of the branch's UDP 4500, or None."""
    return next((m for m in ctl.status("cpe")["services"]["nat"]["mappings"]
                 if m["inside"] == f"{INSIDE[branch]}:4500"), None)


def keepalives(ctl: LabCtl, node: str) -> int:
    return int(ctl.status(node)["services"]["ike"]["nat_keepalives_sent"])


def test_nat_mapping_outlives_its_timeout_with_keepalives_and_expires_without(lab: tuple[str, LabCtl]) -> None:
    _, ctl = lab
    wait_for("ka and noka on h1", lambda: all("h1" in ctl.ike_peers(b) for b in ("ka", "noka")), 60)
    # ka's traffic first: once noka's mapping has expired, ka has been idle longer than the timeout
    assert reaches(ctl, "ka", "h1") and reaches(ctl, "h1", "ka")
    assert reaches(ctl, "noka", "h1") and reaches(ctl, "h1", "noka")
    assert mapping(ctl, "ka") and mapping(ctl, "noka")
    sent = keepalives(ctl, "ka")
    wait_for("noka's mapping to expire on the NAT device", lambda: mapping(ctl, "noka") is None, 40, interval=0.5)
    assert mapping(ctl, "ka") is not None  # kept by its keepalives
    assert keepalives(ctl, "ka") > sent and keepalives(ctl, "noka") == 0
    assert reaches(ctl, "h1", "ka")  # the hub still gets in through ka's mapping
    assert not reaches(ctl, "h1", "noka")  # the NAT device lets nothing in without a mapping
    assert "noka" in ctl.ike_peers("h1")  # the hub cannot tell: only keepalives prevent this
    # noka's next packet out makes a new mapping (the same public port: endpoint-independent)
    assert reaches(ctl, "noka", "h1") and reaches(ctl, "h1", "noka")


def packets_out(ctl: LabCtl, node: str) -> dict[str, int]:
    return {c["peer"]: int(c.get("packets_out", 0)) for c in ctl.status(node)["child_sas"] if c["state"] == "installed"}


def carrier(ctl: LabCtl) -> str:
    """The hub d's traffic to e crosses: the one whose child SA counts the echoes."""
    before = packets_out(ctl, "d")
    ctl.run("d-h1", ["ping", "-n", "-c", "5", "-i", "0.05", "-W", "1", HOSTS["e"]])
    after = packets_out(ctl, "d")
    grew = [h for h in HUBS if after.get(h, 0) - before.get(h, 0) >= 5]
    assert len(grew) == 1, (before, after)
    return grew[0]


def test_restart_after_a_hub_is_killed_traffic_moves_to_the_surviving_hub_and_back(
    lab: tuple[str, LabCtl], runtime: DockerRuntime
) -> None:
    name, ctl = lab
    wait_for("d and e on both hubs", lambda: all_up(ctl), 60)
    assert reaches(ctl, "d", "e")
    dead = carrier(ctl)
    alive = next(h for h in HUBS if h != dead)
    runtime.client.api.kill(ctl.cname(dead))  # SIGKILL: no DELETE, only DPD can tell
    wait_for(f"d to reach e without {dead}", lambda: reaches(ctl, "d", "e"), 60, interval=0.2)
    assert dead not in ctl.ike_peers("d") and dead not in ctl.ike_peers("e")
    assert carrier(ctl) == alive
    lifecycle.start_node(name, dead, runtime)
    wait_for(f"every branch back on {dead}", lambda: all_up(ctl), 90, interval=0.5)
    assert reaches(ctl, "d", "e") and reaches(ctl, "d", "h1")


def test_a_busy_tunnel_sends_no_dpd_checks_and_an_idle_one_goes_on(lab: tuple[str, LabCtl]) -> None:
    # RFC 7296 §2.4: authentic ESP from the peer proves it alive, as an IKE message would. d checks
    # after 2 s of silence (the hubs after 300 s): while d's host pings h1's, d sends h1 no IKE at
    # all; towards h2, which carries nothing meanwhile, it goes on checking.
    name, ctl = lab
    wait_for("d on both hubs", lambda: set(HUBS) <= set(ctl.ike_peers("d")), 90, interval=0.5)
    sas = {s["peer"]: s for s in ctl.status("d")["ike_sas"] if s["state"] == "established"}
    d = sas["h1"]["local"].rsplit(":", 1)[0]
    hub = {h: sas[h]["remote"].rsplit(":", 1)[0] for h in HUBS}
    ike = "udp port 4500 and udp[8:4] = 0 and udp[4:2] > 9"  # the non-ESP marker: IKE (a keepalive is 1 byte)
    with UnderlayCapture(name) as cap:
        code, out = ctl.run("d-h1", ["ping", "-n", "-q", "-c", "160", "-i", "0.05", "-W", "1", HOSTS["h1"]])
    try:
        assert code == 0, out
        to_h1 = cap.lines(f"src host {d} and dst host {hub['h1']} and {ike}")
        to_h2 = cap.lines(f"src host {d} and dst host {hub['h2']} and {ike}")
        assert to_h1 == [], to_h1  # 8 s of ESP from h1: no liveness check needed
        assert len(to_h2) >= 2, to_h2  # silence from h2: a check every ~2 s, as before
    finally:
        cap.cleanup()
