"""IKEv2 load balancer on real containers: topologies/loadbalancer.yml (gw1..gw3 in cluster lb behind
the upstream router edge, br1..br6 knowing only the virtual address 203.0.113.2) plus a swarm of
24 IKE clients (2 of them without RFC 5685 support), as `vpnlab measure balance` adds it.

One lab for the module; the tests run in file order and the destructive ones (failover, rejoin)
come last. Real keepalived, real multicast on the cluster's segment, real IKEv2 from our agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TOPO = Path(__file__).resolve().parents[2] / "topologies" / "loadbalancer.yml"
MEMBERS = ("gw1", "gw2", "gw3")
BRANCHES = tuple(f"br{i}" for i in range(1, 7))
SWARM, LEGACY = 24, 2
ADDR = {"gw1": "203.0.113.10", "gw2": "203.0.113.11", "gw3": "203.0.113.12"}
VIP = "203.0.113.2"


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime) -> Iterator[LabCtl]:
    import uuid

    from vpnlab.measure.balance import with_swarm

    name = f"lb{uuid.uuid4().hex[:6]}"
    try:
        lab = with_swarm(TOPO, SWARM, LEGACY, name, tweak=_strongswan_br6)
        labs.deploy_lab(lab, node_image, runtime=runtime)
        c = LabCtl(runtime, name)
        c.lab_model = lab  # type: ignore[attr-defined]
        # gw1 has the highest priority and preempts: whoever starts first may hold the address briefly
        wait_for("gw1 as VRRP master and every member in every pool", lambda: _settled(c) and master(c) == "gw1", 60)
        yield c
    finally:
        labs.destroy(name, runtime=runtime)


def _strongswan_br6(data: dict) -> None:
    """br6 runs strongSwan 5.9.8 (charon follows redirects by default, charon.follow_redirects)."""
    data["nodes"]["br6"]["implementation"] = "strongswan"


def cluster(ctl: LabCtl, node: str) -> dict:
    from vpnlab.measure.balance import cluster_now

    return cluster_now(ctl, node)  # {} while the node's agent does not answer


def _settled(ctl: LabCtl) -> bool:
    states = [cluster(ctl, m) for m in MEMBERS]
    return ([s.get("vrrp") for s in states].count("MASTER") == 1
            and all(s and all(v["in_pool"] for v in s["members"].values()) for s in states))


def master(ctl: LabCtl, among: tuple[str, ...] = MEMBERS) -> str:
    return next(m for m in among if cluster(ctl, m).get("vrrp") == "MASTER")


def has_vip(ctl: LabCtl, node: str) -> bool:
    code, out = ctl.run(node, ["ip", "-4", "-o", "addr", "show", "dev", "cl0"])
    return code == 0 and " 203.0.113.2/" in out


def test_cluster_vrrp_master_holds_the_virtual_address_and_every_pool_is_complete(ctl: LabCtl) -> None:
    m = master(ctl)
    assert m == "gw1"  # the highest priority (200, 190, 180 in member order), preempting
    assert [has_vip(ctl, x) for x in MEMBERS] == [True, False, False]
    for x in MEMBERS:
        st = cluster(ctl, x)
        assert st["running"] and ctl.status(x)["errors"] == []
        assert st["status_messages"]["accepted"] > 0 and st["status_messages"]["forged"] == 0
        assert {n: v["master"] for n, v in st["members"].items()} == {"gw1": True, "gw2": False, "gw3": False}
    code, out = ctl.run("br1", ["ping", "-n", "-c", "1", "-w", "10", "203.0.113.2"])
    # the branches reach the virtual address through the upstream router (seen failing once in ~20
    # runs under load with "Destination Host Unreachable": the neighbour tables say who answered)
    assert code == 0, out + "".join(
        f"\n{n}: " + ctl.run(n, ["sh", "-c", "ip neigh show dev cl0; ip -4 -o addr show dev cl0"])[1]
        for n in ("edge", *MEMBERS))


INJECT = r"""
import socket, struct, sys, time, dataclasses
from vpnlab_agent.cluster.status import decode_status, encode_status, status_key, MemberStatus
from vpnlab_agent.cluster.config import STATUS_GROUP, STATUS_PORT
me = sys.argv[1]
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
r.bind((STATUS_GROUP, STATUS_PORT))
r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(STATUS_GROUP), socket.inet_aton(me)))
r.settimeout(5)
while True:  # one genuine message of another member, captured off the segment
    data, addr = r.recvfrom(1024)
    if addr[0] != me:
        break
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.sendto(data, (STATUS_GROUP, STATUS_PORT))  # replayed, byte for byte
forged = MemberStatus("gw2", "203.0.113.11", 0, 0, timestamp_ms=int(time.time() * 1000), sequence=2**31)
s.sendto(encode_status(forged, status_key(b"a guessed key", "lb")), (STATUS_GROUP, STATUS_PORT))
print(addr[0])
"""


def test_cluster_forged_and_replayed_status_messages_are_dropped_and_counted(ctl: LabCtl) -> None:
    before = cluster(ctl, "gw1")["status_messages"]
    code, out = ctl.run("gw3", ["python3", "-c", INJECT, "203.0.113.12"])
    assert code == 0, out
    after = wait_for("gw1 to count the forged and the replayed message", lambda: (
        s if (s := cluster(ctl, "gw1")["status_messages"])["forged"] > before["forged"] else None), 5)
    assert after["forged"] == before["forged"] + 1
    assert after["replayed"] >= before["replayed"] + 1  # gw1 heard the copy of gw2's (or its own) message
    assert all(v["in_pool"] for v in cluster(ctl, "gw1")["members"].values())  # nobody was thrown out


def swarm(ctl: LabCtl) -> dict:
    return ctl.status("lb-sw")["services"]["swarm"]


def tunnels(ctl: LabCtl, node: str) -> list[dict]:
    return [sa for sa in ctl.status(node)["ike_sas"] if sa["state"] == "established"]


def serving(ctl: LabCtl) -> dict[str, str]:
    """branch -> the address its IKE SA with the cluster goes to."""
    out = {}
    for b in BRANCHES:
        for sa in tunnels(ctl, b):
            out[b] = sa["remote"].split(":")[0]
    return out


def test_redirect_spreads_branches_and_a_burst_of_clients_evenly(ctl: LabCtl) -> None:
    wait_for("every branch up", lambda: len(serving(ctl)) == len(BRANCHES), 60)
    gw_before = cluster(ctl, "gw1")
    ctl.run("lb-sw", ["python3", "-m", "vpnlab_agent", "ctl", "initiate", "lb"])
    sw = wait_for("every swarm client up", lambda: s if (s := swarm(ctl))["up"] == SWARM else None, 60)
    assert sw["redirects_followed"] >= SWARM - LEGACY and sw["internal_errors"] == 0
    counts = {m: len(tunnels(ctl, m)) for m in MEMBERS}
    gw_after = cluster(ctl, "gw1")
    assert sum(counts.values()) == SWARM + len(BRANCHES)
    # every branch ended up at a member's own address (redirected), none stayed on the VIP
    assert set(serving(ctl).values()) <= set(ADDR.values()), serving(ctl)
    gw = {k: v - gw_before["gateway"].get(k, 0) for k, v in gw_after["gateway"].items()}
    # The 2 legacy ones count at the master. It was 12/9/9 about one run in ten: a loaded master
    # chose again for retransmitted IKE_SA_INITs (now answered from a cache: gw["retransmits"]).
    assert max(counts.values()) - min(counts.values()) <= 2, (counts, gw)
    for b in BRANCHES[:-1]:  # br6 is charon: its SA's remote address above is the proof
        assert ctl.status(b)["services"]["redirect"]["followed"] >= 1, b


def test_redirect_strongswan_client_is_redirected_at_init(ctl: LabCtl) -> None:
    """charon 5.9.8 as client: it announces REDIRECT_SUPPORTED, follows our REDIRECT in the
    IKE_SA_INIT response (nonce checked by charon) and authenticates at the member's address."""
    (sa,) = tunnels(ctl, "br6")
    assert sa["remote"].split(":")[0] in ADDR.values(), sa
    code, out = ctl.run("br6", ["swanctl", "--list-sas", "--raw"])
    assert code == 0 and "ESTABLISHED" in out, out


def test_redirect_traffic_flows_through_the_member_a_branch_was_sent_to(ctl: LabCtl) -> None:
    where = serving(ctl)
    for b, addr in list(where.items())[:3]:
        member = next(m for m, a in ADDR.items() if a == addr)
        host = f"10.0.{member[-1]}.10"  # the member's own LAN host (it narrowed the selectors to it)
        code, out = ctl.run(f"{b}-h1", ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", host])
        assert out.count("bytes from") == 3, (b, member, out)


def test_cluster_client_without_redirect_supported_is_served_by_the_master(ctl: LabCtl) -> None:
    sw = swarm(ctl)
    assert sw["by_gateway"].get(VIP) == LEGACY, sw["by_gateway"]
    gw = cluster(ctl, master(ctl))["gateway"]
    assert gw["unsupported"] >= LEGACY


def test_cluster_master_failover_clients_recover_on_the_survivors(ctl: LabCtl) -> None:
    m = master(ctl)
    survivors = tuple(x for x in MEMBERS if x != m)
    kept = {sa["spi_i"] for x in survivors for sa in tunnels(ctl, x)}
    ctl.rt.client.api.kill(ctl.cname(m))  # type: ignore[attr-defined]
    new = wait_for("a new master", lambda: next((x for x in survivors if cluster(ctl, x).get("vrrp") == "MASTER"), None), 15)
    assert has_vip(ctl, new)
    # DPD (10 s) notices the dead member; its clients come back through the VIP

    def back() -> dict | None:
        s, where = swarm(ctl), serving(ctl)
        state = {"swarm_up": s["up"], "swarm_on_dead": s["by_gateway"].get(ADDR[m], 0),
                 "branches": {b: where.get(b) for b in BRANCHES}}
        ok = (state["swarm_up"] == SWARM and not state["swarm_on_dead"]
              and all(a is not None and a != ADDR[m] for a in state["branches"].values()))
        return state if ok else (print(state) or None)  # the last state shows in the timeout message

    wait_for("every client back on the survivors", back, 60, 1.0)
    after = {x: len(tunnels(ctl, x)) for x in survivors}
    assert sum(after.values()) == SWARM + len(BRANCHES)
    assert max(after.values()) - min(after.values()) <= 3, after
    # the survivors' own tunnels were untouched: the same IKE SAs are still there
    assert kept <= {sa["spi_i"] for x in survivors for sa in tunnels(ctl, x)}
    st = cluster(ctl, new)
    wait_for(f"{m} out of the pool", lambda: not cluster(ctl, new)["members"][m]["in_pool"], 10)
    assert st["status_messages"]["forged"] == 1  # only the one of the forgery test


def test_cluster_member_rejoins_and_receives_new_clients(ctl: LabCtl) -> None:
    """The killed master's own container started again, as `vpnlab start LAB NODE` does."""
    from vpnlab.lifecycle import start_node

    dead = next(x for x in MEMBERS if ctl.rt.get(ctl.cname(x)) is None or not _running(ctl, x))
    start_node(ctl.lab, dead, ctl.rt)
    wait_for(f"{dead} back in every pool", lambda: all(
        cluster(ctl, x).get("members", {}).get(dead, {}).get("in_pool") for x in MEMBERS), 60, 0.5)
    ctl.run("lb-sw", ["python3", "-m", "vpnlab_agent", "ctl", "terminate", "lb"])
    wait_for("the swarm down", lambda: swarm(ctl)["up"] == 0, 30)
    ctl.run("lb-sw", ["python3", "-m", "vpnlab_agent", "ctl", "initiate", "lb"])
    sw = wait_for("the swarm up again", lambda: s if (s := swarm(ctl))["up"] == SWARM else None, 60)
    assert sw["by_gateway"].get(ADDR[dead], 0) >= SWARM // 6, sw["by_gateway"]  # it takes its share again


def _running(ctl: LabCtl, node: str) -> bool:
    info = ctl.rt.client.api.inspect_container(ctl.cname(node))  # type: ignore[attr-defined]
    return bool(info["State"]["Running"])


DEAF = "nft add table inet lbtest && nft add chain inet lbtest input '{ type filter hook input priority -10; }' " \
       "&& nft add rule inet lbtest input udp dport '{ 500, 4500 }' drop"


def test_cluster_member_that_does_not_answer_ike_is_left_out_and_locks_no_client_out(ctl: LabCtl) -> None:
    """A member in the pool (its status messages go on) whose IKE port is dropped: it draws its share
    of a burst once; the master sees none of them arrive (its arrivals stay flat), leaves it out,
    and the clients, back at the virtual address after 7.5 s, are sent to the others. Before, it
    drew them again every 2 s until their loop guard (5 redirects in 300 s) locked them out."""
    m = master(ctl)
    deaf = next(x for x in reversed(MEMBERS) if x != m)
    ctl.run("lb-sw", ["python3", "-m", "vpnlab_agent", "ctl", "terminate", "lb"])
    wait_for("the swarm down", lambda: swarm(ctl)["up"] == 0, 30)
    refused = swarm(ctl)["loop_refused"]
    code, out = ctl.run(deaf, ["sh", "-c", DEAF])
    assert code == 0, out
    ctl.run("lb-sw", ["python3", "-m", "vpnlab_agent", "ctl", "initiate", "lb"])
    sw = wait_for("every swarm client up without the deaf member", lambda: s if (
        s := swarm(ctl))["up"] == SWARM and not s["by_gateway"].get(ADDR[deaf]) else None, 45, 0.5)
    assert sw["loop_refused"] == refused, sw
    seen = cluster(ctl, m)["members"][deaf]
    assert seen["in_pool"] and seen["missed"] >= 1, seen  # it stayed in the pool: only IKE was deaf
