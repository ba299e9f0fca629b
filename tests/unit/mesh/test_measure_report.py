"""The arithmetic of `vpnlab measure hub-traffic` on recorded agent status and iperf3 output."""

from __future__ import annotations

import pytest

from vpnlab.errors import LabError
from vpnlab.measure import report
from vpnlab.measure.hub_traffic import plan_flows, with_mesh
from vpnlab.topology.loader import load_topology

from pathlib import Path

TOPO = Path(__file__).resolve().parents[3] / "topologies" / "mesh.yml"


def st(mesh: dict, child_sas: list | None = None) -> dict:
    return {"services": {"mesh": mesh}, "child_sas": child_sas or []}


B = st({"shortcuts": [{"id": "0000abcd", "peer": "br1", "role": "requester", "state": "up",
                       "timeline": {"session_seen": 10.0, "request_sent": 10.0, "relayed": 10.004, "ike_auth": 10.020,
                                    "routes_switched": 10.021}}],
        "timeline": [{"id": "00000001", "peer": "br1", "role": "requester", "end": "idle",
                      "events": {"session_seen": 1.0, "first_packet": 1.05}}]})
A = st({"shortcuts": [{"id": "0000abcd", "peer": "br2", "role": "initiator", "state": "up",
                       "timeline": {"relayed": 10.003, "ike_sa_init": 10.003, "ike_auth": 10.019,
                                    "routes_switched": 10.022, "first_packet": 10.030}}]},
       [{"peer": "br2", "bytes_in": 100, "bytes_out": 900}, {"peer": "hub", "bytes_in": 5, "bytes_out": 5}])
HUB = st({"relayed": [{"id": "0000abcd", "at": 10.002}],
          "hub_pairs": [{"src": "br1", "dst": "br2", "packets": 3, "bytes": 300},
                        {"src": "br2", "dst": "br1", "packets": 2, "bytes": 200},
                        {"src": "br1", "dst": "br3", "packets": 7, "bytes": 700}]})


def test_timeline_merges_both_branches_and_the_hub() -> None:
    first = report.timeline(B, A, HUB, "br1", "br2")
    assert first == {"session_seen": 1.0, "first_packet": 1.05}  # the first shortcut of the pair
    latest = report.timeline(B, A, HUB, "br1", "br2", latest=True)
    assert report.relative_ms(latest) == {"session_seen": 0.0, "request_sent": 0.0, "hub_relayed": 2.0,
                                          "relay_at_a": 3.0, "ike_sa_init": 3.0, "ike_auth": 20.0,
                                          "routes_switched": 22.0, "first_packet": 30.0}
    assert report.timeline(B, A, HUB, "br3", "br2") is None


def test_counters() -> None:
    assert report.hub_pair(HUB, "br2", "br1") == (5, 500)
    assert report.hub_total(HUB) == (12, 1200)
    assert report.shortcut_bytes(A, "br2") == 1000
    assert report.share(500, 99_500) == 0.5 and report.share(0, 0) is None and report.share(10, 0) == 100.0


def test_series_is_throughput_between_samples() -> None:
    samples = [[0.0, 0, 0], [0.5, 1_250_000, 10], [1.0, 2_500_000, 20], [1.5, 2_500_000, 20]]
    ts, mbps = report.hub_series(samples, 0.0, 1.5)
    assert ts == [0.5, 1.0, 1.5] and mbps == [20.0, 20.0, 0.0]


def test_iperf_figures() -> None:
    tcp = {"end": {"sum_sent": {"retransmits": 4}, "sum_received": {"bytes": 1000, "bits_per_second": 2e7}}}
    assert report.iperf_figures(tcp, udp=False) == {"error": None, "bytes": 1000, "mbps": 20.0, "retransmits": 4}
    udp = {"end": {"sum": {"bytes": 10, "bits_per_second": 1e6}},
           "server_output_json": {"end": {"sum": {"lost_packets": 2, "packets": 100, "out_of_order": 1}}}}
    assert report.iperf_figures(udp, udp=True)["lost"] == 2
    assert report.iperf_figures(udp, udp=True)["out_of_order"] == 1
    client_only = {"end": {"sum": {"bytes": 10, "bits_per_second": 1e6, "lost_packets": 9},
                           "sum_received": {"lost_packets": 3, "packets": 50},
                           "streams": [{"udp": {"out_of_order": 2}}, {"udp": {"out_of_order": 1}}]}}
    fig = report.iperf_figures(client_only, udp=True)
    assert (fig["lost"], fig["packets"], fig["out_of_order"]) == (3, 50, 3)
    assert report.iperf_figures({"error": "unable to connect"}, udp=False)["error"] == "unable to connect"


def test_flow_plans_and_mesh_switch() -> None:
    lab = load_topology(TOPO)
    flows = plan_flows(lab, "all")
    assert len(flows) == 6 and flows[0].src == "br1" and flows[0].dst_addr == "10.2.0.10"
    assert len({f.port for f in flows}) == 6
    assert [(f.src, f.dst) for f in plan_flows(lab, "br3:br1")] == [("br3", "br1")]
    with pytest.raises(LabError, match="not a branch with a host"):
        plan_flows(lab, "br1:hub")
    with pytest.raises(LabError, match="not 'branch:branch'"):
        plan_flows(lab, "br1")
    off = with_mesh(lab, False, "x-off")
    assert off.name == "x-off" and not any(n.mesh.enabled for n in off.routers)
    assert off.node("br3").mesh.idle_timeout_s == 60
