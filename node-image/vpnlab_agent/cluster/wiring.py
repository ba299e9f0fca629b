"""Which services a cluster member or a redirect-following client runs (called by agent.build_services).

A member runs, on top of its own IKE service (its own address, where redirected clients arrive):
- a second IKE service on the cluster's virtual address, with its own data-plane engine, carrying
  the RFC 5685 gateway extension: it answers only while keepalived has given us the address (the
  socket is bound in advance, net.ipv4.ip_nonlocal_bind=1), redirects clients that support it and
  serves the others itself; when we stop being master, what it served dies with the address
  (nothing can be sent from an address we no longer hold): those clients notice by DPD and come
  back to the virtual address, which the new master holds;
- the cluster service (keepalived, status multicast, pool, balancer).
A client whose config names redirect peers gets the RFC 5685 client extension on its IKE endpoint.
"""

from __future__ import annotations

import time
from typing import Any

from vpnlab_agent.cluster.arrivals import ArrivalCounter
from vpnlab_agent.cluster.config import cluster_config
from vpnlab_agent.cluster.redirect_client import RedirectClient
from vpnlab_agent.cluster.redirect_gateway import RedirectGateway
from vpnlab_agent.cluster.service import ClusterService
from vpnlab_agent.config import NodeConfig

VIP_DEVICE = "ipsec1"  # the userspace engine of the virtual address (the member's own one is ipsec0)


def tunnels(ike: Any, states: frozenset[str]) -> int:
    """IKE SAs in these states (a rekeyed SA's successor counts once: "rekeyed" is never counted)."""
    return sum(1 for sa in ike.endpoint.status(time.monotonic())["ike_sas"] if sa["state"] in states)


# A member's load: established tunnels plus handshakes under way at its own address. A client the
# master redirected counts from its first IKE_SA_INIT here, so the next status message already
# carries it and the master's pending count hands over without a gap (a gap overfills the member).
OWN_STATES = frozenset({"established", "half-open"})
# On the virtual address only established SAs count: half-open ones there are clients being
# redirected at IKE_AUTH, which end up elsewhere.
VIP_STATES = frozenset({"established"})


def vip_engine(config: NodeConfig, route_src: str | None) -> Any:
    from vpnlab_agent.dataplane.probe import esp_probe_error, select_engine

    if config.dataplane == "userspace" or (config.dataplane == "auto" and esp_probe_error() is not None):
        from vpnlab_agent.dataplane.userspace import UserspaceEngine

        return UserspaceEngine(route_src=route_src, device=VIP_DEVICE)
    return select_engine(config.dataplane, route_src=route_src)


class VipIke:
    """The IKE service on the virtual address, named apart from the member's own."""

    def __init__(self, ike: Any) -> None:
        self.ike = ike
        self.name = "ike-vip"

    async def start(self) -> None:
        await self.ike.start()

    async def stop(self) -> None:
        await self.ike.stop()

    def status(self) -> dict[str, Any]:
        return self.ike.status()


def cluster_services(config: NodeConfig, ike: Any, route_src: str | None) -> list[Any]:
    cfg = cluster_config(config)
    if cfg is None:
        return []
    from vpnlab_agent.io.ike_service import IkeService

    holder: dict[str, Any] = {}
    arrivals = ArrivalCounter()
    ike.endpoint.add_extension(arrivals)
    svc = ClusterService(cfg, lambda: tunnels(ike, OWN_STATES) + (tunnels(holder["vip"], VIP_STATES) if "vip" in holder else 0),
                         arrivals=arrivals)
    gateway = RedirectGateway(cfg.own, cfg.redirect, svc.choose, svc.served_here)
    vip = IkeService(config, vip_engine(config, route_src), local_addr=cfg.vip, extensions=[gateway])
    holder["vip"] = vip
    svc.gateway = gateway

    return [VipIke(vip), svc]


class RedirectClientService:
    """Reports the RFC 5685 client extension's counters (`ctl status` -> services.redirect)."""

    name = "redirect"

    def __init__(self, ext: RedirectClient) -> None:
        self.ext = ext

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return self.ext.status()


def client_services(config: NodeConfig, ike: Any) -> list[Any]:
    raw = config.extensions.get("redirect") or {}
    peers = dict(raw.get("peers") or {})
    if not peers:
        return []
    ext = RedirectClient(peers)
    ike.endpoint.add_extension(ext)
    ike.at_once.update(peers)  # a dead member: straight back to the virtual address
    return [RedirectClientService(ext)]
