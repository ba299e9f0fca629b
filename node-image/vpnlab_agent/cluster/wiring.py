"""Which services a cluster member runs on top of its IKE service (called by agent.build_services)."""

from __future__ import annotations

from typing import Any

from vpnlab_agent.cluster.config import cluster_config
from vpnlab_agent.cluster.service import ClusterService
from vpnlab_agent.config import NodeConfig


def established(ike: Any) -> int:
    """Active tunnels: established IKE SAs with clients (a rekeyed SA's successor counts once)."""
    return sum(1 for sa in ike.endpoint.status(ike._now())["ike_sas"] if sa["state"] == "established")


def cluster_services(config: NodeConfig, ike: Any) -> list[Any]:
    cfg = cluster_config(config)
    if cfg is None:
        return []
    return [ClusterService(cfg, lambda: established(ike))]
