"""The status report `ctl status` returns and the orchestrator's `inspect` reads.

Shape (every key always present):
  {"node", "role", "implementation", "ready", "started_at", "dataplane",
   "interfaces": [{"name", "addresses", "up"}],
   "routes": [{"dst", "via", "dev", "table", "type", "metric"}]  (type "unreachable": a leak guard),
   "ike_sas": [{"peer", "state", "local", "remote", "initiator", "algorithms", "age_s", "spi_i", "spi_r"}],
   "child_sas": [{"peer", "local_ts", "remote_ts", "spi_in", "spi_out", "algorithm",
                  "bytes_in", "bytes_out", "packets_in", "packets_out", "age_s"}],
   "errors": [str], "services": {name: service status}}
Services contribute SAs by returning "ike_sas"/"child_sas" lists from their status(); everything
else they return stays under "services". "phase" says what bring-up is doing ("running" once done).

The summary (`ctl summary`, what deploy polls and the lab-wide inspect shows) keeps to a few
hundred bytes whatever the number of peers' selectors:
  {"node", "role", "implementation", "ready", "phase", "dataplane", "errors",
   "tunnels": {configured peer: "up" | the IKE SA's state | "down"},
   "ike_sas": n, "child_sas": n, "half_open": n, "other_ike_sas": n (mesh shortcuts)}
A tunnel is "up" when its IKE SA is established and it has at least one child SA.
"""

from __future__ import annotations

import time
from typing import Any

from vpnlab_agent.config import NodeConfig

IKE_SA_KEYS = ("peer", "state", "local", "remote", "initiator", "algorithms", "age_s", "spi_i", "spi_r")
CHILD_SA_KEYS = (
    "peer", "local_ts", "remote_ts", "spi_in", "spi_out", "algorithm",
    "bytes_in", "bytes_out", "packets_in", "packets_out", "age_s",
)
TOP_KEYS = (
    "node", "role", "implementation", "ready", "phase", "started_at", "dataplane", "interfaces", "routes",
    "ike_sas", "child_sas", "errors", "services",
)
SUMMARY_KEYS = (
    "node", "role", "implementation", "ready", "phase", "dataplane", "errors", "tunnels",
    "ike_sas", "child_sas", "half_open", "other_ike_sas",
)
UP = "up"


def iso_utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def _normalise(entry: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    # A service may add more (e.g. "reqid"); the documented keys are always there, None when unknown.
    out = {key: entry.get(key) for key in keys}
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def build(
    config: NodeConfig,
    *,
    ready: bool,
    started_at: float,
    dataplane: str | None,
    interfaces: list[dict[str, Any]],
    routes: list[dict[str, Any]],
    services: dict[str, dict[str, Any]],
    errors: list[str],
    phase: str = "running",
) -> dict[str, Any]:
    ike_sas: list[dict[str, Any]] = []
    child_sas: list[dict[str, Any]] = []
    service_status: dict[str, dict[str, Any]] = {}
    all_errors = list(errors)
    for name, status in services.items():
        status = dict(status)
        ike_sas.extend(_normalise(sa, IKE_SA_KEYS) for sa in status.pop("ike_sas", []))
        child_sas.extend(_normalise(sa, CHILD_SA_KEYS) for sa in status.pop("child_sas", []))
        all_errors.extend(f"{name}: {err}" for err in status.pop("errors", []))
        service_status[name] = status
    return {
        "node": config.name,
        "role": config.role,
        "implementation": config.implementation,
        "ready": ready,
        "phase": phase,
        "started_at": iso_utc(started_at),
        "dataplane": dataplane,
        "interfaces": interfaces,
        "routes": routes,
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "errors": all_errors,
        "services": service_status,
    }


def tunnel_states(peers: list[str], ike_sas: list[dict[str, Any]], child_sas: list[dict[str, Any]]) -> dict[str, str]:
    """{peer: "up" | state of its IKE SA | "down"} for each configured peer."""
    # A child SA carries traffic once installed (a "rekeyed" one is on its way out).
    with_child = {c.get("peer") for c in child_sas if c.get("state") in (None, "installed")}
    by_peer: dict[Any, list[str]] = {}
    for sa in ike_sas:
        by_peer.setdefault(sa.get("peer"), []).append(str(sa.get("state")))
    out: dict[str, str] = {}
    for peer in peers:
        states = by_peer.get(peer, [])
        if "established" in states and peer in with_child:
            out[peer] = UP
        else:
            out[peer] = states[-1] if states else "down"
    return out


def per_site(states: dict[str, str]) -> dict[str, str]:
    """One state per configured tunnel to a router: per-network contexts give a router one IKE peer
    per context (`<router>.<context>`, docs/hsvpn.md; '.' is in no node name), and the tunnel to
    that router is up only when all of them are; otherwise the first one's state that is not."""
    out: dict[str, str] = {}
    for peer, state in states.items():
        site = peer.split(".", 1)[0]
        if out.get(site, UP) == UP:
            out[site] = state
    return out


def summary(
    config: NodeConfig,
    *,
    ready: bool,
    phase: str,
    dataplane: str | None,
    services: dict[str, dict[str, Any]],
    errors: list[str],
) -> dict[str, Any]:
    peers = [p.name for p in config.ike.peers] if config.ike else []
    ike_sas: list[dict[str, Any]] = []
    child_sas: list[dict[str, Any]] = []
    all_errors = list(errors)
    half_open = 0
    peer_set = set(peers)
    for name, st in services.items():
        ike_sas.extend(st.get("ike_sas", []))
        child_sas.extend(st.get("child_sas", []))
        all_errors.extend(f"{name}: {err}" for err in st.get("errors", []))
        half_open += int(st.get("half_open", 0) or 0)
    return {
        "node": config.name,
        "role": config.role,
        "implementation": config.implementation,
        "ready": ready,
        "phase": phase,
        "dataplane": dataplane,
        "errors": all_errors,
        "tunnels": per_site(tunnel_states(peers, ike_sas, child_sas)),
        "ike_sas": len(ike_sas),
        "child_sas": len(child_sas),
        "half_open": half_open,
        "other_ike_sas": sum(1 for sa in ike_sas if sa.get("peer") not in peer_set),
    }
