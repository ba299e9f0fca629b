"""The resolved lab: what `load_topology()` returns after validation and address planning.

Plain frozen dataclasses with every address decided. The YAML schema (schema.py) is the raw form;
this is what kinds, the runtime and the CLI consume. Names read like the network they describe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Literal

Role = Literal["hub", "branch", "gateway", "host", "upstream", "swarm", "nat"]  # upstream, swarm: planned for a cluster
HUB_ROLES: tuple[Role, ...] = ("hub", "gateway")  # gateways act like hubs for branches (for now)
Implementation = Literal["agent", "strongswan", "libreswan", "host", "nat"]
SegmentKind = Literal["underlay", "lan", "cluster", "nat"]  # a context LAN is a "lan" segment too; "nat": a NAT device's inside

UNDERLAY = "inet"  # name of the emulated internet segment


@dataclass(frozen=True)
class Segment:
    """One L2 broadcast domain, realised as one Linux bridge."""

    name: str  # "inet" for the underlay, "lan-<router>-<i>" for LANs; <= 15 chars is not required here
    kind: SegmentKind
    subnet: IPv4Network


@dataclass(frozen=True)
class Interface:
    name: str  # name inside the container: "wan0", "lan0", "lan1"; hosts: "eth0"
    segment: str  # Segment.name
    address: IPv4Interface


@dataclass(frozen=True)
class MeshSettings:  # Advanced Mesh VPN (docs/mesh.md)
    enabled: bool = False
    idle_timeout_s: int = 300
    max_tunnels: int | None = None  # None: the licence default of `device` (vpnlab_agent.mesh.licence)
    device: str | None = None
    hole_punching: bool = False  # branches behind NAT: shortcuts through UDP hole punching
    # Not in the topology file: `vpnlab measure hub-traffic` sets it on the hub to count the star's
    # branch-to-branch bytes with mesh off (a hub otherwise runs no mesh service in such a lab).
    count_pairs: bool = False


@dataclass(frozen=True)
class LibreswanSettings:  # implementation: libreswan (docs/loadbalancer.md, "libreswan 4.10")
    accept_redirect: bool = True  # client: pluto's accept-redirect
    redirect_to: str | None = None  # gateway: the libreswan hub every client is sent to
    redirect: Literal["init", "auth"] = "init"  # init: global-redirect at IKE_SA_INIT; auth: per conn in IKE_AUTH


@dataclass(frozen=True)
class CryptoSettings:  # a router's IKE/ESP settings (docs/topology.md, `crypto` and `auth`)
    auth: Literal["psk", "cert"] = "psk"  # how this router proves its identity
    ike_proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",)
    esp_proposals: tuple[str, ...] = ("aes128gcm16",)
    ike_lifetime_s: int = 14400
    child_lifetime_s: int = 3600
    rekey_margin_s: int | None = None  # None: a tenth of each lifetime
    dpd_interval_s: int = 10
    nat_keepalive_s: int = 20  # from behind a NAT (RFC 3948 §2.3); 0: none
    cert_key: Literal["ecdsa-p256", "rsa-2048"] = "ecdsa-p256"
    fragmentation: bool = True  # RFC 7383, used when the peer announces it too
    fragment_size: int = 1280  # bytes of IP datagram per IKE fragment, as strongSwan's default


@dataclass(frozen=True)
class NatSettings:  # a NAT device (docs/topology.md, "NAT devices")
    type: Literal["endpoint-independent", "symmetric"]
    mapping_timeout_s: int
    inside: IPv4Network  # the private segment its branches' wan0 sit in
    branches: tuple[str, ...]  # behind it, in lab order (CGN when more than one)


@dataclass(frozen=True)
class Context:
    """One routing context of one router (docs/hsvpn.md): its own routing table and LAN segments.

    Contexts are matched by name between routers; `number` and `table` are the same on every
    router for one name (lab-wide, in order of first appearance in the file)."""

    name: str
    lans: tuple[IPv4Network, ...]
    number: int  # 1, 2, ...: proposed HSVPN tag, VXLAN VNI offset, XFRM mark/if_id
    table: int  # routing table id (and VRF table where the kernel has VRF devices)
    interfaces: tuple[str, ...] = ()  # the router's interfaces on this context's LANs


@dataclass(frozen=True)
class Node:
    name: str
    role: Role
    implementation: Implementation
    interfaces: tuple[Interface, ...]
    public_address: IPv4Address | None = None  # None for hosts and for routers behind NAT
    lan_subnets: tuple[IPv4Network, ...] = ()
    hubs: tuple[str, ...] = ()  # branches: hubs they attach to
    follow_redirects: bool = False  # branches: RFC 5685 towards their hubs too (always towards clusters)
    router: str | None = None  # hosts: the router whose LAN they sit in
    gateway: IPv4Address | None = None  # default gateway: hosts (router LAN address), branches behind NAT
    psk: str | None = None  # routers: their own PSK (`secret`), None: the pair's or the lab's
    crypto: CryptoSettings = field(default_factory=CryptoSettings)
    dataplane: Literal["auto", "userspace", "xfrm"] = "auto"
    behind_nat: bool = False  # branch without a public address: reaches the hub, accepts no shortcut
    nat_device: str | None = None  # branches behind NAT: the NAT device between wan0 and the internet
    nat: NatSettings | None = None  # NAT devices only
    mesh: MeshSettings = field(default_factory=MeshSettings)
    contexts: tuple[Context, ...] = ()  # routers: routing contexts (docs/hsvpn.md)
    context: str | None = None  # hosts: the routing context of their LAN (None: the plain LANs)
    cluster: str | None = None  # the load-balancer cluster this gateway (or upstream router) belongs to
    libreswan: LibreswanSettings | None = None  # implementation: libreswan

    @property
    def is_router(self) -> bool:
        """Routers run the agent (IKE, or strongSwan); hosts and NAT devices do not speak IPsec."""
        return self.role not in ("host", "nat")


@dataclass(frozen=True)
class Cluster:  # IKEv2 load balancer: gateways sharing a VRRP virtual address (docs/loadbalancer.md)
    name: str  # also the IKE identity every member shows the cluster's clients
    members: tuple[str, ...]
    virtual_address: IPv4Address  # the VIP clients know, on `segment`
    segment: IPv4Network | None = None  # shared L2 for VRRP and status; routed via the upstream router
    segment_name: str = ""  # Segment.name of it
    upstream: str = ""  # the upstream router's node name
    upstream_address: IPv4Address | None = None  # its address on the segment: the members' gateway
    member_addresses: dict[str, IPv4Address] = field(default_factory=dict)  # where clients get redirected
    redirect: Literal["init", "auth"] = "init"
    metric: Literal["tunnels", "capacity"] = "tunnels"
    capacity: dict[str, int] = field(default_factory=dict)  # 0: no limit
    weights: dict[str, int] = field(default_factory=dict)
    priorities: dict[str, int] = field(default_factory=dict)
    vrrp_version: int = 3
    advert_int_s: float = 1.0
    preempt: bool = True
    virtual_router_id: int = 51
    status_interval_s: float = 1.0
    key: str = ""  # status-message key (secret)
    swarm: str = ""  # the swarm node's name ("" without one), its clients, and their prefix
    swarm_clients: int = 0
    swarm_legacy: int = 0
    swarm_prefix: IPv4Network | None = None


@dataclass(frozen=True)
class Lab:
    name: str
    source: Path  # the topology file it came from
    underlay: IPv4Network
    segments: tuple[Segment, ...]
    nodes: tuple[Node, ...]
    clusters: tuple[Cluster, ...] = ()
    context_method: str = "hsvpn"  # hsvpn | tunnel-in-tunnel | per-network (docs/hsvpn.md)
    inner_block: IPv4Network | None = None  # tunnel-in-tunnel endpoint/transit addresses (contexts.py)
    psk: str | None = None  # the lab-wide PSK
    pair_psks: tuple[tuple[frozenset[str], str], ...] = ()  # ({router, router}, PSK)

    def psk_between(self, a: str, b: str) -> str | None:
        """The PSK of the tunnel between routers a and b: the pair's own, else the branch's, else
        the hub's, else the lab-wide one (docs/topology.md, `secrets`)."""
        pair = frozenset((a, b))
        for names, psk in self.pair_psks:
            if names == pair:
                return psk
        ends = sorted((self.node(a), self.node(b)), key=lambda n: n.role != "branch")
        return next((n.psk for n in ends if n.psk), None) or self.psk

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def routers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_router)

    @property
    def hosts(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "host")

    @property
    def nat_devices(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == "nat")


def branches_of(lab: Lab, hub: str) -> tuple[Node, ...]:
    """Branches attached to `hub`, in lab order."""
    return tuple(n for n in lab.nodes if n.role == "branch" and hub in n.hubs)
