"""Per-network routing contexts on the kernel XFRM engine, for real inside user-mode Linux: each
context a VRF device, one IKE SA and child SA per context, the contexts' SAs told apart by XFRM
marks (docs/hsvpn.md).

Two scenarios, each run once inside UML; each test checks one property of what it recorded:
- `facts` (xfrm_contexts_uml_payload.py, about 25 s): two routers running the agent's contexts and
  IKE services, three contexts, a rekey;
- `lab` (xfrm_contexts_lab_uml_payload.py, about 35 s): a hub and two branches planned from a
  topology file by the orchestrator, each router the real agent process, branch to branch through
  the hub in each context.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.root import uml

HERE = Path(__file__).resolve().parent
CONTEXTS = {"corp": 0x65, "guest": 0x66, "voice": 0x67}  # context -> its table, which is its mark
# packets each way per context in the payload: pings (3, 5, 7) + one question from A, + one from B
# for corp and guest
EXPECTED = {"corp": 5, "guest": 7, "voice": 8}
REMOTE = {"xa": {"corp": "10.2.0.0/24", "guest": "10.2.0.0/24", "voice": "10.6.0.0/24"},
          "xb": {"corp": "10.1.0.0/24", "guest": "10.1.0.0/24", "voice": "10.5.0.0/24"}}
MODULES = uml.DEFAULT_MODULES + ("vrf", "sch_ingress", "cls_matchall", "act_skbedit", "bridge")

pytestmark = [pytest.mark.uml, pytest.mark.timeout(300)]


def _run(payload: str) -> dict[str, Any]:
    result = uml.run_python((HERE / payload).read_text(), timeout_s=240, modules=MODULES)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"payload printed no result (rc {result.returncode}):\n{result.output[-4000:]}\n{result.console[-2000:]}"
    data = json.loads(lines[-1][len("RESULT ") :])
    assert "error" not in data, data["error"] + "\n" + result.output[-3000:]
    return data


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    return _run("xfrm_contexts_uml_payload.py")


@pytest.fixture(scope="module")
def lab() -> dict[str, Any]:
    return _run("xfrm_contexts_lab_uml_payload.py")


def test_the_agent_picks_xfrm_and_makes_each_context_a_vrf(facts: dict[str, Any]) -> None:
    for side in ("xa", "xb"):
        assert facts["routers"][side] == {"engine": "xfrm", "mode": "vrf", "services": ["contexts", "ike"]}
        k = facts["kernel_up"][side]
        for c, table in CONTEXTS.items():
            assert f"v-{c}:" in k["vrfs"] and f"vrf table {table}" in k["vrfs"], k["vrfs"]
            assert f"master v-{c}" in k["masters"][c], k["masters"][c]
            assert "clsact" in k["qdiscs"][c]  # what enters the context gets its mark (tc skbedit)
            assert f"fwmark {table:#x} lookup {table}" in k["rules"], k["rules"]
            assert k["tables"][c].startswith("unreachable default"), k["tables"][c]
            # the tunnel's route is in the context's table (to the wire, where the policy takes it)
            assert f"{REMOTE[side][c]} dev {'va' if side == 'xa' else 'vb'}" in k["tables"][c], k["tables"][c]
        assert "10." not in k["main"], k["main"]  # no context's LAN or tunnel in main
    assert facts["children"] == {"xa": 3, "xb": 3}  # one child SA per context


def test_states_and_policies_carry_their_contexts_mark(facts: dict[str, Any]) -> None:
    for side, peer_addr in (("xa", "192.0.2.2"), ("xb", "192.0.2.1")):
        k = facts["kernel_up"][side]
        sas = facts["counters"][side]
        for c, mark in CONTEXTS.items():
            sa = sas[c]
            assert sa["mark"] == f"{mark:#x}", sa
            (out,) = [s for s in k["states"] if s["spi"] == sa["spi_out"]]
            (inb,) = [s for s in k["states"] if s["spi"] == sa["spi_in"]]
            # outbound: matches the context's mark, leaves unmarked (routed in main, to the peer)
            assert out["dst"] == peer_addr and out["mark"] == f"{mark:#x}/0xffffffff", out
            assert out["set_mark"] == "0x0/0xffffffff", out
            # inbound: found by SPI alone, marks what it decrypts into the context
            assert inb["mark"] is None and inb["set_mark"] == f"{mark:#x}/0xffffffff", inb
        assert len(k["states"]) == 6
        marked = [p for p in k["policies"] if p["dir"] in ("out", "in", "fwd")]
        assert len(marked) == 9 and all(p["if_id"] is None for p in marked), marked
        for c, mark in CONTEXTS.items():
            assert sorted(p["dir"] for p in marked if p["mark"] == f"{mark:#x}/0xffffffff") == ["fwd", "in", "out"]
    # corp and guest: identical selectors, two sets of policies told apart by the mark alone
    xa = facts["kernel_up"]["xa"]["policies"]
    assert len([p for p in xa if p["src"] == "10.1.0.0/24" and p["dir"] == "out"]) == 2


def test_each_contexts_traffic_reaches_its_own_host_only(facts: dict[str, Any]) -> None:
    assert facts["ping"] == {"corp": {"received": 3, "sent": 3}, "guest": {"received": 5, "sent": 5},
                             "voice": {"received": 7, "sent": 7}}
    # corp and guest ask the same address, 10.2.0.10: each gets its own context's host
    assert facts["who"] == {"corp": "xb-corp", "guest": "xb-guest", "voice": "xb-voice"}
    assert facts["who_back"] == {"corp": "xa-corp", "guest": "xa-guest"}


def test_each_contexts_traffic_crosses_its_own_sa_only(facts: dict[str, Any]) -> None:
    for side in ("xa", "xb"):
        got = {c: (sa["packets_out"], sa["packets_in"]) for c, sa in facts["counters"][side].items()}
        assert got == {c: (n, n) for c, n in EXPECTED.items()}, (side, got)


def test_a_context_cannot_reach_another_contexts_lan(facts: dict[str, Any]) -> None:
    cross = facts["cross"]
    assert cross["corp_to_voice_ping"]["received"] == 0 and cross["corp_to_voice_who"] is None, cross
    assert cross["voice_to_corp_ping"]["received"] == 0 and cross["voice_to_corp_who"] is None, cross
    # dropped at the router in the sender's context (unreachable there), never sent into a tunnel
    for side in ("xa", "xb"):
        before = {c: (sa["packets_out"], sa["packets_in"]) for c, sa in facts["counters"][side].items()}
        after = {c: (sa["packets_out"], sa["packets_in"]) for c, sa in facts["counters_after_cross"][side].items()}
        assert after == before, (side, before, after)


def test_the_wire_shows_only_esp_in_udp_and_ike(facts: dict[str, Any]) -> None:
    wire = facts["wire"]
    # every packet of every context, both ways, encrypted: the counters' sum, plus the 4 pings
    # and one question after the rekey, each way
    assert wire["esp_in_udp"] == 2 * (sum(EXPECTED.values()) + 5), wire
    assert wire["ike_udp"] >= 12, wire  # 3 x (IKE_SA_INIT, IKE_AUTH) both ways, and the rekey
    assert wire["icmp"] == 0 and wire["other"] == 0, wire
    assert wire["inner_addr_in_outer_hdr"] == 0 and wire["pattern_seen"] == 0, wire


def test_rekeying_one_context_leaves_the_others_and_nothing_old(facts: dict[str, Any]) -> None:
    assert facts["rekey"]["started"] == 1
    assert facts["children_after_rekey"] == {"xa": 3, "xb": 3}
    before, after = facts["counters"]["xa"], facts["counters_rekeyed"]["xa"]
    assert after["guest"]["spi_in"] != before["guest"]["spi_in"] and after["guest"]["spi_out"] != before["guest"]["spi_out"]
    for c in ("corp", "voice"):
        assert (after[c]["spi_in"], after[c]["spi_out"]) == (before[c]["spi_in"], before[c]["spi_out"])
    for side in ("xa", "xb"):
        k = facts["kernel_rekeyed"][side]
        spis = {s["spi"] for s in k["states"]}
        sas = facts["counters_rekeyed"][side]
        assert spis == {x for sa in sas.values() for x in (sa["spi_in"], sa["spi_out"])}, (side, k["states"])
        assert len([p for p in k["policies"] if p["mark"] == "0x66/0xffffffff"]) == 3
    assert facts["ping_rekeyed"] == {"received": 4, "sent": 4} and facts["who_rekeyed"] == "xb-guest"
    assert after["guest"]["packets_out"] == 5 and after["guest"]["packets_in"] == 5, after["guest"]


def test_stopping_removes_every_state_policy_vrf_rule_and_mark(facts: dict[str, Any]) -> None:
    for side in ("xa", "xb"):
        k = facts["kernel_closed"][side]
        assert k["states"] == [] and k["policies"] == [], (side, k)
        assert k["vrfs"].strip() == "" and "fwmark" not in k["rules"], (side, k)
        assert all(t.strip() == "" for t in k["tables"].values()), (side, k["tables"])
        assert all("clsact" not in q for q in k["qdiscs"].values()), (side, k["qdiscs"])
        assert all("master" not in m for m in k["masters"].values()), (side, k["masters"])


def test_status_shows_each_contexts_sa(facts: dict[str, Any]) -> None:
    st = facts["contexts_status"]
    assert st["method"] == "per-network" and st["mode"] == "vrf"
    for c in st["contexts"]:
        assert c["device"] is None and [sa["context"] for sa in c["sas"]] == [c["name"]], c
        assert c["sas"][0]["mark"] == f"{CONTEXTS[c['name']]:#x}"


# ---- a planned lab: hub and two branches, the agent process on each ---------------------------

LAB_SAS = {"hub": 6, "br1": 3, "br2": 3}  # one per context per site pair (voice: hub and br1; iot: hub and br2)


def test_lab_every_agent_runs_xfrm_with_vrfs_and_one_tunnel_per_context(lab: dict[str, Any]) -> None:
    for r, n in LAB_SAS.items():
        s = lab["summary"][r]
        assert s["ready"] and s["dataplane"] == "xfrm" and s["errors"] == [], s
        assert (s["ike_sas"], s["child_sas"]) == (n, n), s
        assert set(s["tunnels"].values()) == {"up"}, s
        assert lab["contexts"][r]["method"] == "per-network" and lab["contexts"][r]["mode"] == "vrf"
        k = lab["kernel_up"][r]
        assert len(k["states"]) == 2 * n
        for c in k["tables"]:
            assert f"v-{c}:" in k["vrfs"] and f"master v-{c}" in k["masters"][c]
        # each outbound state carries one context's mark; the inbound ones set it
        assert sorted(st["mark"] for st in k["states"] if st["mark"]) == sorted(st["set_mark"] for st in k["states"] if not st["mark"])


def test_lab_branch_to_branch_through_the_hub_stays_in_its_context(lab: dict[str, Any]) -> None:
    assert lab["ping"] == {"corp": {"received": 3, "sent": 3}, "guest": {"received": 5, "sent": 5}}
    assert lab["who"] == {
        "br1-corp1>10.1.2.10": "br2-corp1", "br1-guest1>10.1.2.10": "br2-guest1",  # the same address
        "br2-corp1>10.1.1.10": "br1-corp1", "br2-guest1>10.1.0.10": "hub-guest1",
        "br1-voice1>10.5.0.10": "hub-voice1",
        # the hub's iot LAN (10.0.0.0/8) holds its other contexts' addresses: its routes still get
        # an address of iot's own VRF as source (the kernel refused another context's)
        "br2-iot1>10.0.0.10": "hub-iot1",
    }
    # br2 has no voice: neither its contexts reach voice's LANs, nor voice br2's
    assert lab["cross"] == {"br2-corp1>10.5.1.10": None, "br2-corp1>10.5.0.10": None, "br1-voice1>10.1.2.10": None,
                            "br1-voice1>10.1.2.10 ping": {"received": 0, "sent": 2}}


def test_lab_each_sa_counts_exactly_its_contexts_packets(lab: dict[str, Any]) -> None:
    # corp: 3 pings and 2 questions br1 <-> br2; guest: 5 pings, 1 question br1 -> br2, 1 br2 -> hub
    expected = {
        "hub": {"br1.corp": 5, "br1.guest": 6, "br1.voice": 1, "br2.corp": 5, "br2.guest": 7, "br2.iot": 1},
        "br1": {"hub.corp": 5, "hub.guest": 6, "hub.voice": 1},
        "br2": {"hub.corp": 5, "hub.guest": 7, "hub.iot": 1},
    }
    for r, want in expected.items():
        got = {p: (c["packets_out"], c["packets_in"]) for p, c in lab["children"][r].items()}
        assert got == {p: (n, n) for p, n in want.items()}, (r, got)


def test_lab_underlay_shows_only_esp_in_udp(lab: dict[str, Any]) -> None:
    wire = lab["wire"]
    # every inner packet once per hop: pings 2 x 2 x (3 + 5), questions 4 + 4 + 4 + 2 + 2 + 2
    assert wire["esp_in_udp"] == 50, wire
    assert wire["icmp"] == 0 and wire["other"] == 0, wire
    assert wire["inner_addr_in_outer_hdr"] == 0 and wire["pattern_seen"] == 0, wire


def test_lab_agents_stop_cleanly_and_leave_nothing(lab: dict[str, Any]) -> None:
    assert lab["exit"] == {"hub": 0, "br1": 0, "br2": 0}, lab["logs_tail"]
    for r in LAB_SAS:
        k = lab["kernel_closed"][r]
        assert k["states"] == [] and k["policies"] == [] and k["vrfs"].strip() == "", (r, k)
        assert "fwmark" not in k["rules"] and all(t.strip() == "" for t in k["tables"].values()), (r, k)
