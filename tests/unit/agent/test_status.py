"""status.build(): the report's shape, and how service SAs and errors are merged into it."""

from __future__ import annotations

import json

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.status import CHILD_SA_KEYS, IKE_SA_KEYS, SUMMARY_KEYS, TOP_KEYS, build, iso_utc, per_site, summary


def test_shape_without_services(branch: NodeConfig) -> None:
    st = build(branch, ready=False, started_at=0.0, dataplane=None,
               interfaces=[{"name": "lo", "addresses": ["127.0.0.1/8"], "up": True}],
               routes=[], services={}, errors=["ike: not available"])
    assert tuple(st) == TOP_KEYS
    assert st["node"] == "br1" and st["role"] == "branch" and st["implementation"] == "strongswan"
    assert st["ready"] is False and st["started_at"] == "1970-01-01T00:00:00.000Z"
    assert st["ike_sas"] == [] and st["child_sas"] == [] and st["errors"] == ["ike: not available"]
    json.dumps(st)  # the control socket sends it as JSON


def test_service_sas_are_lifted_and_normalised(hub: NodeConfig) -> None:
    services = {
        "strongswan": {
            "running": True,
            "ike_sas": [{"peer": "br1", "state": "ESTABLISHED", "extra": 1}],
            "child_sas": [{"peer": "br1", "spi_in": "c0ffee01", "bytes_in": 10}],
            "errors": ["list-sas: timeout"],
        },
    }
    st = build(hub, ready=True, started_at=1764100800.25, dataplane="strongswan-libipsec",
               interfaces=[], routes=[], services=services, errors=[])
    (ike,) = st["ike_sas"]
    assert tuple(ike)[: len(IKE_SA_KEYS)] == IKE_SA_KEYS
    assert ike["peer"] == "br1" and ike["spi_i"] is None and ike["extra"] == 1
    (child,) = st["child_sas"]
    assert set(CHILD_SA_KEYS) <= set(child) and child["bytes_in"] == 10 and child["packets_out"] is None
    assert st["errors"] == ["strongswan: list-sas: timeout"]
    assert st["services"] == {"strongswan": {"running": True}}
    assert st["started_at"] == "2025-11-25T20:00:00.250Z"
    # the service's own dict is not modified
    assert "ike_sas" in services["strongswan"]


def test_iso_utc_has_milliseconds_and_z() -> None:
    assert iso_utc(1.5) == "1970-01-01T00:00:01.500Z"


def test_summary_says_per_configured_peer_whether_its_tunnel_is_up(hub: NodeConfig) -> None:
    assert hub.ike is not None
    peers = [p.name for p in hub.ike.peers]
    assert len(peers) >= 2
    first, second = peers[0], peers[1]
    services = {
        "ike": {
            "ike_sas": [{"peer": first, "state": "established"}, {"peer": second, "state": "established"},
                        {"peer": "shortcut-peer", "state": "established"}],
            # the second peer's only child is the old one of a rekey: not up
            "child_sas": [{"peer": first, "state": "installed"}, {"peer": second, "state": "rekeyed"}],
            "half_open": 2,
            "errors": ["x"],
        },
    }
    st = summary(hub, ready=True, phase="running", dataplane="userspace", services=services, errors=[])
    assert tuple(st) == SUMMARY_KEYS
    assert st["tunnels"][first] == "up" and st["tunnels"][second] == "established"
    assert all(st["tunnels"][p] == "down" for p in peers[2:])
    assert (st["ike_sas"], st["child_sas"], st["half_open"], st["other_ike_sas"]) == (3, 2, 2, 1)
    assert st["errors"] == ["ike: x"] and st["phase"] == "running"
    json.dumps(st)


def test_per_network_peers_give_one_state_per_router() -> None:
    # per-network contexts: one IKE peer per context towards a router; deploy waits on the router
    states = {"hub.corp": "up", "hub.voice": "connecting", "hub.guest": "down", "br2": "up",
              "br3.corp": "up", "br3.voice": "up"}
    assert per_site(states) == {"hub": "connecting", "br2": "up", "br3": "up"}
