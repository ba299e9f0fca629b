"""The node config: the one contract between the orchestrator and the router agent.

The orchestrator writes it as JSON to CONFIG_PATH inside the container before the agent starts;
the agent reads it and never talks back except through its status report. Plain dataclasses, no
third-party imports: this module runs on the host (orchestrator) and in the image (agent) alike.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

CONFIG_PATH = "/etc/vpnlab/node.json"
STATE_DIR = "/run/vpnlab"
CONTROL_SOCKET = "/run/vpnlab/agent.sock"
PKI_DIR = "/etc/vpnlab/pki"  # the lab CA's certificate, this router's certificate and key (mode 0600)

Role = Literal["hub", "branch", "gateway", "upstream", "swarm", "nat"]  # upstream: a cluster's router, no IKE; nat: a NAT device (vpnlab_agent/nat)
Implementation = Literal["agent", "strongswan", "nat"]
Dataplane = Literal["auto", "userspace", "xfrm"]
Auth = Literal["psk", "cert"]


@dataclass(frozen=True)
class InterfaceConfig:
    name: str  # name inside the container, e.g. "wan0", "lan0"
    kind: Literal["wan", "lan"]
    addresses: tuple[str, ...]  # CIDR interface notation, e.g. "198.51.100.10/24"


@dataclass(frozen=True)
class RouteConfig:
    dst: str  # CIDR, "0.0.0.0/0" for default
    via: str | None = None
    dev: str | None = None


@dataclass(frozen=True)
class PeerConfig:
    """One IKE peer as seen from this node."""

    name: str
    remote_id: str  # FQDN identity the peer authenticates with (we use node names)
    address: str | None  # peer public address; None when only the peer may initiate
    initiate: bool  # True: this node starts IKE_SA_INIT towards the peer
    local_ts: tuple[str, ...]  # CIDRs protected on our side
    remote_ts: tuple[str, ...]  # CIDRs reached through this peer
    local_id: str | None = None  # our identity towards this peer; None: IkeConfig.local_id
    auth: Auth = "psk"  # how the peer proves its identity
    psk: str | None = None  # this tunnel's key; None: IkeConfig.psk
    # auth "cert": the certificate the lab issued to this peer (PEM file). Any other one, even from
    # the lab CA with the right name, is refused: revoked by omission.
    cert_file: str | None = None


@dataclass(frozen=True)
class PkiConfig:
    """PEM files: the lab CA (the only trust anchor), our certificate (identity in its
    subjectAltName) and its private key."""

    ca_file: str = f"{PKI_DIR}/ca.pem"
    cert_file: str = f"{PKI_DIR}/cert.pem"
    key_file: str = f"{PKI_DIR}/key.pem"


@dataclass(frozen=True)
class IkeConfig:
    local_id: str  # FQDN identity
    psk: str  # for peers without their own (mesh shortcuts: the lab-wide key); "" for none
    ike_proposals: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",)
    esp_proposals: tuple[str, ...] = ("aes128gcm16",)
    ike_lifetime_s: int = 14400
    child_lifetime_s: int = 3600
    dpd_interval_s: int = 10
    nat_keepalive_s: int = 20  # RFC 3948 §2.3: NAT keepalives from behind a NAT, this often; 0: none
    # Tries of a liveness check 0.5 s apart before the peer is dead; None: the usual backoff (15.5 s).
    # A branch on two hubs gets 3, so it fails over within dpd_interval + 1.5 s.
    dpd_retries: int | None = None
    peers: tuple[PeerConfig, ...] = ()
    auth: Auth = "psk"  # how we prove our identity
    rekey_margin_s: int | None = None  # rekey this long before a lifetime ends; None: a tenth of it
    pki: PkiConfig | None = None  # auth "cert", or peers that use it
    # RFC 7383 IKE fragmentation, announced in IKE_SA_INIT; fragment_size is the largest IP datagram
    # of an IKE fragment (strongSwan's charon.fragment_size, 1280 by default as there).
    fragmentation: bool = True
    fragment_size: int = 1280


@dataclass(frozen=True)
class NodeConfig:
    lab: str
    name: str
    role: Role
    implementation: Implementation
    public_address: str | None  # our address on the underlay, None when behind NAT
    interfaces: tuple[InterfaceConfig, ...]
    routes: tuple[RouteConfig, ...] = ()
    lan_subnets: tuple[str, ...] = ()
    dataplane: Dataplane = "auto"
    ike: IkeConfig | None = None
    # Reserved for the features that follow (mesh, HSVPN contexts, load-balancer cluster).
    extensions: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        return _build(cls, json.loads(text))


def load(path: str = CONFIG_PATH) -> NodeConfig:
    with open(path, encoding="utf-8") as f:
        return NodeConfig.from_json(f.read())


_NESTED: dict[str, type] = {
    "interfaces": InterfaceConfig,
    "routes": RouteConfig,
    "peers": PeerConfig,
    "ike": IkeConfig,
    "pki": PkiConfig,
}


def _build(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a frozen dataclass from asdict() output (lists become tuples, nested types restored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        nested = _NESTED.get(key)
        if isinstance(value, list):
            # Interned: a hub's peers each list every other branch's LAN (n² selectors at n branches),
            # and JSON gives each occurrence its own string object.
            value = tuple(_build(nested, v) if nested and isinstance(v, dict)
                          else sys.intern(v) if isinstance(v, str) else v for v in value)
        elif nested and isinstance(value, dict):
            value = _build(nested, value)
        kwargs[key] = value
    return cls(**kwargs)
