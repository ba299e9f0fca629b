"""The raw topology file as pydantic v2 models: the YAML boundary, nothing else uses pydantic.

Everything is strict (`extra="forbid"`, no silent str->int coercion) so that a typo is an error
rather than a default. Cross-field rules that need the whole lab (unknown hubs, overlaps, address
collisions) live in plan.py; rules about one node's own keys live here.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
CONTEXT_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")

DEFAULT_INTERNET = "198.51.100.0/24"

RouterRole = Literal["hub", "branch", "gateway"]
NodeRole = Literal["hub", "branch", "gateway", "host", "nat"]
ImplementationName = Literal["agent", "strongswan", "libreswan"]
DataplaneName = Literal["auto", "userspace", "xfrm"]
# How routing contexts cross the tunnels (docs/hsvpn.md): one tunnel with a tag in the ESP trailer,
# one tunnel with a VXLAN per context inside it, or one tunnel per context.
ContextMethod = Literal["hsvpn", "tunnel-in-tunnel", "per-network"]
# NAT device behaviour (RFC 4787 terms): port-preserving masquerade, as most home routers do, or a
# "symmetric" NAT that picks a random public port for every new destination.
NatType = Literal["endpoint-independent", "symmetric"]
NAT_TYPES: tuple[str, ...] = ("endpoint-independent", "symmetric")
DEFAULT_NAT_TYPE = "endpoint-independent"

# Which keys each role may use; anything else set on a node of that role is refused.
HOST_KEYS = frozenset({"role", "router", "address"})
NAT_KEYS = frozenset({"role", "type", "public", "mapping_timeout"})
ROUTER_KEYS = frozenset(
    {"role", "implementation", "lan", "hosts", "public", "dataplane", "mesh", "contexts", "auth", "secret", "crypto",
     "libreswan"}
)
ROLE_KEYS: dict[str, frozenset[str]] = {
    "hub": ROUTER_KEYS,
    "gateway": ROUTER_KEYS,
    "branch": ROUTER_KEYS | {"hubs", "nat", "follow_redirects"},
    "host": HOST_KEYS,
    "nat": NAT_KEYS,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_cidr(value: Any) -> IPv4Network:
    """An IPv4 network in CIDR form with no host bits set; ValueError with a short reason otherwise."""
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR such as 10.1.0.0/24, got {value!r}")
    if "/" not in value:
        raise ValueError(f"invalid CIDR {value!r}: missing prefix length (such as /24)")
    if ":" in value:
        raise ValueError(f"invalid CIDR {value!r}: only IPv4 is supported")
    try:
        net = IPv4Network(value, strict=False)
    except ValueError:
        raise ValueError(f"invalid CIDR {value!r}") from None
    if net.network_address != IPv4Address(value.split("/")[0]):
        raise ValueError(f"invalid CIDR {value!r}: host bits are set (did you mean {net}?)")
    return net


def parse_ipv4(value: Any) -> IPv4Address:
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 address such as 198.51.100.20, got {value!r}")
    try:
        return IPv4Address(value)
    except ValueError:
        raise ValueError(f"invalid IPv4 address {value!r}") from None


def check_node_name(value: str, what: str = "node name") -> str:
    if not NODE_NAME_RE.match(value):
        raise ValueError(
            f"bad {what} {value!r}: use 1-15 lowercase letters, digits or '-', starting with a letter"
        )
    return value


class PskSecret(_Strict):
    psk: str | None = None
    psk_file: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PskSecret:
        if (self.psk is None) == (self.psk_file is None):
            raise ValueError("give exactly one of psk or psk_file")
        if self.psk is not None and not self.psk.strip():
            raise ValueError("psk is empty")
        return self


class PairSecret(PskSecret):
    """A PSK for the tunnel between two routers (overrides their own and the lab-wide one)."""

    peers: list[str] = Field(min_length=2, max_length=2)

    @field_validator("peers")
    @classmethod
    def _peers(cls, v: list[str]) -> list[str]:
        for name in v:
            check_node_name(name)
        if v[0] == v[1]:
            raise ValueError(f"a pair needs two different routers, got {v[0]!r} twice")
        return v


AuthName = Literal["psk", "cert"]
CertKeyName = Literal["ecdsa-p256", "rsa-2048"]


class CryptoSpec(_Strict):
    """IKE and ESP settings in strongSwan's words (docs/topology.md, `crypto`). Every key is optional:
    a router's keys override `defaults.crypto` key by key, and what neither sets keeps the default."""

    proposals: list[str] | None = None  # IKE proposals, e.g. aes256gcm16-prfsha384-ecp384
    esp_proposals: list[str] | None = None
    ike_lifetime: int | None = Field(default=None, gt=0)  # seconds; the IKE SA is gone by then
    child_lifetime: int | None = Field(default=None, gt=0)
    rekey_margin: int | None = Field(default=None, gt=0)  # seconds before a lifetime ends to rekey
    dpd_interval: int | None = Field(default=None, gt=0)  # seconds of silence before a liveness check
    nat_keepalive: int | None = Field(default=None, ge=0)  # seconds between NAT keepalives; 0: none
    cert_key: CertKeyName | None = None  # key type of the router's certificate (auth: cert)
    fragmentation: bool | None = None  # RFC 7383 IKE fragmentation (strongSwan's `fragmentation`)
    # largest IP datagram of an IKE fragment (strongSwan's charon.fragment_size); 576: IPv4's minimum
    fragment_size: int | None = Field(default=None, ge=576, le=65535)

    @field_validator("proposals", "esp_proposals", mode="before")
    @classmethod
    def _proposal_list(cls, v: Any, info: ValidationInfo) -> Any:
        from vpnlab_agent.ike.proposals import canonical

        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise ValueError(f"expected a proposal or a non-empty list of proposals, got {v!r}")
        for item in v:
            if not isinstance(item, str):
                raise ValueError(f"proposals are strings such as aes128gcm16-prfsha256-ecp256, got {item!r}")
            canonical(item, esp=info.field_name == "esp_proposals")  # ValueError lists what is supported
        return v


class MeshSpec(_Strict):  # Advanced Mesh VPN (docs/mesh.md)
    enabled: bool = False
    idle_timeout: int = Field(default=300, gt=0)
    max_tunnels: int | None = Field(default=None, ge=0)
    device: str | None = None  # licence category (vpnlab_agent.mesh.licence), sets the default limit
    hole_punching: bool = False  # beyond LANCOM: shortcuts between branches behind NAT (docs/mesh.md)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        from vpnlab_agent.mesh.licence import CATEGORIES

        if v is not None and v not in CATEGORIES:
            raise ValueError(f"unknown mesh device {v!r} (known: {', '.join(CATEGORIES)})")
        return v


class DefaultsSpec(_Strict):
    dataplane: DataplaneName = "auto"
    mesh: MeshSpec | None = None
    auth: AuthName = "psk"
    crypto: CryptoSpec | None = None


class ContextSpec(_Strict):  # HSVPN routing context (docs/hsvpn.md); planned in topology/contexts.py
    name: str
    lan: list[str] | None = None  # one CIDR or a list; planned when omitted
    hosts: int | list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not CONTEXT_NAME_RE.match(v):
            raise ValueError(
                f"bad context name {v!r}: use 1-10 lowercase letters or digits, starting with a letter "
                "(it becomes part of interface names)"
            )
        return v

    @field_validator("lan", mode="before")
    @classmethod
    def _lan(cls, v: Any) -> Any:
        return _cidr_list(v)

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        return _host_list(v)


def _cidr_list(v: Any) -> Any:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError(f"expected a CIDR or a list of CIDRs, got {v!r}")
    if not v:
        raise ValueError("empty list: omit 'lan' to have it planned")
    for item in v:
        parse_cidr(item)
    return v


def _host_list(v: Any) -> Any:
    # bool is an int in Python; 'hosts: yes' is a mistake, not 1 host
    if isinstance(v, bool) or not isinstance(v, (int, list)):
        raise ValueError(f"expected a number of hosts or a list of host names, got {v!r}")
    if isinstance(v, int):
        if v < 0 or v > 200:
            raise ValueError(f"host count must be between 0 and 200, got {v}")
        return v
    seen: set[str] = set()
    for name in v:
        if not isinstance(name, str):
            raise ValueError(f"host names must be strings, got {name!r}")
        check_node_name(name, "host name")
        if name in seen:
            raise ValueError(f"host {name!r} is listed twice")
        seen.add(name)
    return v


class LibreswanSpec(_Strict):  # implementation: libreswan (docs/loadbalancer.md, "libreswan 4.10")
    accept_redirect: bool = True  # as a client: follow RFC 5685 REDIRECTs (pluto's accept-redirect)
    redirect_to: str | None = None  # as a gateway: send every client to this libreswan hub of the lab
    redirect: Literal["init", "auth"] = "init"  # init: global-redirect in IKE_SA_INIT; auth: redirect-to per conn


class NodeSpec(_Strict):
    role: NodeRole
    # routers
    implementation: ImplementationName = "agent"
    lan: list[str] | None = None
    hosts: int | list[str] | None = None
    public: str | None = None
    dataplane: DataplaneName | None = None
    mesh: MeshSpec | None = None
    contexts: list[ContextSpec] | None = None
    auth: AuthName | None = None  # how this router proves its identity: psk | cert
    secret: PskSecret | None = None  # this router's own PSK, instead of the lab-wide one
    crypto: CryptoSpec | None = None
    libreswan: LibreswanSpec | None = None  # implementation: libreswan only
    # branches
    hubs: list[str] | None = None
    nat: bool | str = False  # true, a NAT type (own device of that type) or a `role: nat` node's name
    follow_redirects: bool = False  # RFC 5685 towards its hubs too (always towards clusters)
    # hosts
    router: str | None = None
    address: str | None = None
    # NAT devices
    type: NatType | None = None
    mapping_timeout: int | None = Field(default=None, gt=0, le=86400)  # seconds a UDP mapping lives idle

    @field_validator("lan", mode="before")
    @classmethod
    def _lan_list(cls, v: Any) -> Any:
        return _cidr_list(v)

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, v: Any) -> Any:
        return _host_list(v)

    @field_validator("public", "address", mode="before")
    @classmethod
    def _ipv4(cls, v: Any) -> Any:
        if v is not None:
            parse_ipv4(v)
        return v

    @field_validator("hubs")
    @classmethod
    def _hubs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("empty list: name at least one hub")
        dup = sorted({h for h in v if v.count(h) > 1})
        if dup:
            raise ValueError(f"hub {dup[0]!r} is listed twice")
        return v

    @field_validator("contexts")
    @classmethod
    def _contexts(cls, v: list[ContextSpec]) -> list[ContextSpec]:
        names = [c.name for c in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"context {dup[0]!r} is defined twice")
        return v

    @model_validator(mode="after")
    def _keys_fit_role(self) -> NodeSpec:
        allowed = ROLE_KEYS[self.role]
        for key in self.model_fields_set:
            if key not in allowed:
                raise ValueError(
                    f"key {key!r} is not allowed for role {self.role} "
                    f"(a {self.role} takes: {', '.join(sorted(allowed))})"
                )
        if self.role == "host" and self.router is None:
            raise ValueError("a host needs 'router': the router whose LAN it sits in")
        if self.implementation == "strongswan" and self.mesh is not None and self.mesh.enabled:
            # strongSwan does not speak the mesh protocol: the key would silently do nothing
            raise ValueError("mesh shortcuts need implementation: agent (a strongswan node stays on the star)")
        if self.implementation == "strongswan" and self.contexts:
            # charon here has no per-context routing tables or tags (docs/hsvpn.md, "strongSwan")
            raise ValueError("routing contexts need implementation: agent (a strongswan node carries only plain LANs)")
        if self.implementation == "libreswan" or self.libreswan is not None:
            _check_libreswan(self)
        if self.nat is not False and self.public is not None:
            raise ValueError("a branch with nat: true has no public address (its NAT device has one); drop 'public'")
        return self


def _check_libreswan(node: NodeSpec) -> None:
    """What a libreswan node cannot do here, refused rather than silently dropped."""
    if node.implementation != "libreswan":
        raise ValueError("key 'libreswan' needs implementation: libreswan")
    if node.mesh is not None and node.mesh.enabled:
        raise ValueError("mesh shortcuts need implementation: agent (a libreswan node stays on the star)")
    if node.contexts:
        raise ValueError("routing contexts need implementation: agent (a libreswan node carries only plain LANs)")
    if node.auth == "cert":
        raise ValueError("auth: cert is not supported with implementation: libreswan (PSK only)")
    if node.role == "gateway":
        raise ValueError("a cluster member needs implementation: agent (libreswan can be a hub or a branch)")
    if node.libreswan is not None and node.libreswan.redirect_to is not None and node.role != "hub":
        raise ValueError("libreswan.redirect_to: only a hub redirects its clients")


class VrrpSpec(_Strict):  # a cluster's VRRP (keepalived) settings
    version: Literal[2, 3] = 3
    advert_int: float = Field(default=1.0, ge=0.01, le=40.95)  # seconds; VRRPv3 takes hundredths
    preempt: bool = True
    virtual_router_id: int = Field(default=51, ge=1, le=255)
    priorities: dict[str, int] | None = None  # member -> 1..254; default 200, 190, ... in member order

    @field_validator("priorities")
    @classmethod
    def _priorities(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for name, prio in (v or {}).items():
            if not 1 <= prio <= 254:
                raise ValueError(f"priority of {name!r} must be 1..254, got {prio}")
        return v

    @model_validator(mode="after")
    def _whole_seconds_for_v2(self) -> VrrpSpec:
        if self.version == 2 and self.advert_int != int(self.advert_int):
            raise ValueError("advert_int of VRRPv2 is whole seconds: use version: 3 for sub-second adverts")
        return self


class UpstreamSpec(_Strict):  # the router between a cluster's segment and the internet
    name: str | None = None
    public: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_node_name(v, "upstream router name")

    @field_validator("public", mode="before")
    @classmethod
    def _ipv4(cls, v: Any) -> Any:
        if v is not None:
            parse_ipv4(v)
        return v


class SwarmSpec(_Strict):  # a container of IKE clients for measuring a cluster (vpnlab measure balance)
    clients: int = Field(ge=1, le=1000)
    legacy: int = Field(default=0, ge=0)  # how many of them announce no RFC 5685 support
    prefix: str = "198.18.0.0/22"  # their own addresses (RFC 2544 benchmarking range), routed via the upstream

    @field_validator("prefix", mode="before")
    @classmethod
    def _cidr(cls, v: Any) -> Any:
        parse_cidr(v)
        return v

    @model_validator(mode="after")
    def _fits(self) -> SwarmSpec:
        if self.legacy > self.clients:
            raise ValueError(f"legacy {self.legacy} is more than clients {self.clients}")
        if parse_cidr(self.prefix).num_addresses - 2 < self.clients:
            raise ValueError(f"prefix {self.prefix} holds fewer than {self.clients} client addresses")
        return self


class ClusterSpec(_Strict):  # IKEv2 load balancer (docs/loadbalancer.md); planned in clusters.py
    members: list[str] = Field(min_length=1)
    address: str | None = None  # the virtual address (VIP), in `segment`
    segment: str | None = None  # the members' shared L2 segment, routed from the internet via upstream
    upstream: UpstreamSpec = UpstreamSpec()
    redirect: Literal["init", "auth"] = "init"
    metric: Literal["tunnels", "capacity"] = "tunnels"
    capacity: int | dict[str, int] | None = None  # tunnels a member takes; 0 or none: no limit
    weights: dict[str, int] | None = None  # capacity metric: relative share per member
    status_interval: float = Field(default=1.0, ge=0.05, le=10.0)  # seconds between status messages
    key: str | None = None  # the status messages' key; derived from the lab secret when omitted
    vrrp: VrrpSpec = VrrpSpec()
    swarm: SwarmSpec | None = None

    @field_validator("address", mode="before")
    @classmethod
    def _ipv4(cls, v: Any) -> Any:
        if v is not None:
            parse_ipv4(v)
        return v

    @field_validator("segment", mode="before")
    @classmethod
    def _cidr(cls, v: Any) -> Any:
        if v is not None:
            parse_cidr(v)
        return v

    @field_validator("members")
    @classmethod
    def _members(cls, v: list[str]) -> list[str]:
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"member {dup[0]!r} is listed twice")
        return v

    @field_validator("capacity", "weights")
    @classmethod
    def _counts(cls, v: int | dict[str, int] | None) -> int | dict[str, int] | None:
        values = v.values() if isinstance(v, dict) else [] if v is None else [v]
        for n in values:
            if n < 0 or n > 1_000_000:
                raise ValueError(f"must be 0..1000000, got {n}")
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and len(v.strip()) < 8:
            raise ValueError("key is shorter than 8 characters")
        return v


class TopologySpec(_Strict):
    name: str
    internet: str = DEFAULT_INTERNET
    secret: PskSecret | None = None  # lab-wide PSK; needed unless every PSK tunnel has its own
    secrets: list[PairSecret] = Field(default_factory=list)  # per pair of routers
    defaults: DefaultsSpec = DefaultsSpec()
    nodes: dict[str, NodeSpec] = Field(min_length=1)
    clusters: dict[str, ClusterSpec] = Field(default_factory=dict)
    context_method: ContextMethod = "hsvpn"  # only matters when some router has contexts

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        check_lab_name(v)
        return v

    @field_validator("internet", mode="before")
    @classmethod
    def _internet(cls, v: Any) -> Any:
        net = parse_cidr(v)
        if net.prefixlen > 28:
            raise ValueError(f"underlay {net} is too small: use a /28 or larger")
        return v

    @field_validator("nodes", mode="before")
    @classmethod
    def _node_names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key in v:
                if not isinstance(key, str):
                    raise ValueError(f"node names must be strings, got {key!r} (quote it)")
                check_node_name(key)
        return v

    @field_validator("clusters", mode="before")
    @classmethod
    def _cluster_names(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for key in v:
                if not isinstance(key, str):
                    raise ValueError(f"cluster names must be strings, got {key!r} (quote it)")
                check_node_name(key, "cluster name")
        return v


def check_lab_name(value: str) -> str:
    if not LAB_NAME_RE.match(value):
        raise ValueError(
            f"bad lab name {value!r}: use 1-12 lowercase letters, digits or '-', starting with a "
            "letter (it becomes part of namespace and container names)"
        )
    return value
