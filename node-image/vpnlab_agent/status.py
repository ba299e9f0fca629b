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
else they return stays under "services".
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
    "node", "role", "implementation", "ready", "started_at", "dataplane", "interfaces", "routes",
    "ike_sas", "child_sas", "errors", "services",
)


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
        "started_at": iso_utc(started_at),
        "dataplane": dataplane,
        "interfaces": interfaces,
        "routes": routes,
        "ike_sas": ike_sas,
        "child_sas": child_sas,
        "errors": all_errors,
        "services": service_status,
    }
