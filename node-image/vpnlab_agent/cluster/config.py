"""extensions["cluster"] of a member's node config (written by the orchestrator's cluster_config.py)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from vpnlab_agent.cluster.keepalived import VrrpInstance
from vpnlab_agent.cluster.selection import metric_named
from vpnlab_agent.cluster.status import MemberStatus, status_key
from vpnlab_agent.config import NodeConfig

STATUS_GROUP = "239.255.56.85"  # organisation-local scope (RFC 2365); link-local by TTL 1
STATUS_PORT = 5685


@dataclass(frozen=True)
class Member:
    name: str
    address: str
    priority: int
    capacity: int
    weight: int


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    own: str
    interface: str
    virtual_address: str  # CIDR interface form, "203.0.113.2/24"
    members: tuple[Member, ...]
    redirect: str  # "init" | "auth"
    metric: str
    vrrp_version: int
    advert_int_s: float
    preempt: bool
    virtual_router_id: int
    status_interval_s: float
    key: bytes  # the HMAC key of the status messages (already derived per cluster)

    @property
    def vip(self) -> str:
        return str(ipaddress.ip_interface(self.virtual_address).ip)

    @property
    def me(self) -> Member:
        return next(m for m in self.members if m.name == self.own)

    def vrrp_instance(self) -> VrrpInstance:
        return VrrpInstance(
            name=f"lb_{self.name}".replace("-", "_"), interface=self.interface,
            virtual_router_id=self.virtual_router_id, priority=self.me.priority,
            virtual_addresses=(self.virtual_address,), advert_int=self.advert_int_s,
            nopreempt=not self.preempt, version=self.vrrp_version,
        )

    def own_status(self, active: int, *, available: bool, master: bool, arrivals: int = 0) -> MemberStatus:
        me = self.me
        return MemberStatus(me.name, me.address, active, me.capacity, me.weight, available, master,
                            int(self.status_interval_s * 1000), arrivals=arrivals)


def cluster_config(config: NodeConfig) -> ClusterConfig | None:
    raw: Any = config.extensions.get("cluster")
    if not raw:
        return None
    try:
        members = tuple(Member(n, m["address"], int(m["priority"]), int(m["capacity"]), int(m["weight"]))
                        for n, m in raw["members"].items())
        vrrp = raw["vrrp"]
        cfg = ClusterConfig(
            name=raw["name"], own=config.name, interface=raw["interface"], virtual_address=raw["virtual_address"],
            members=members, redirect=raw["redirect"], metric=raw["metric"], vrrp_version=int(vrrp["version"]),
            advert_int_s=float(vrrp["advert_int_s"]), preempt=bool(vrrp["preempt"]),
            virtual_router_id=int(vrrp["virtual_router_id"]), status_interval_s=float(raw["status_interval_s"]),
            key=status_key(str(raw["key"]).encode(), raw["name"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"extensions.cluster: {type(exc).__name__}: {exc}") from None
    if config.name not in {m.name for m in members}:
        raise ValueError(f"extensions.cluster: {config.name} is not a member of {cfg.name}")
    if cfg.redirect not in ("init", "auth"):
        raise ValueError(f"extensions.cluster: redirect {cfg.redirect!r} (init or auth)")
    metric_named(cfg.metric)
    return cfg
