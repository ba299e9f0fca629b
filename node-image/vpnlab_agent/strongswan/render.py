"""Render strongSwan's configs from the node config (jinja2 templates in templates/).

Pure functions: node config in, file text out. Everything the templates show is checked here first
(names, addresses, selectors, proposals), so a bad config fails with one line, not a charon that
starts and silently ignores a connection.
"""

from __future__ import annotations

import ipaddress
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import jinja2

from vpnlab_agent.config import NodeConfig, PeerConfig
from vpnlab_agent.strongswan.proposals import ProposalError, esp_proposals, ike_proposals

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
VICI_SOCKET = "/var/run/charon.vici"
ROUTING_TABLE = 220
# charon's plugins, in load order: randomness and crypto (openssl: AES-GCM/CBC, ECP, x25519;
# gmp: MODP), the key derivation (kdf, needed since 5.9.8), then the kernel interfaces, the IKE
# socket and VICI.
CHARON_PLUGINS_HEAD = (
    "random", "nonce", "openssl", "aes", "sha1", "sha2", "hmac", "gcm", "gmp", "curve25519", "kdf",
    "pem", "pkcs1", "pkcs8", "x509", "pubkey",
)
CHARON_PLUGINS_TAIL = ("kernel-netlink", "socket-default", "vici", "updown")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_FQDN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")


class RenderError(ValueError):
    """The node config cannot be expressed as a strongSwan config; one line."""


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def identity(value: str) -> str:
    """A swanctl identity: IP addresses as they are, anything else as an explicit FQDN."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _FQDN.match(value):
        raise RenderError(f"identity {value!r}: not an IP address or a host name")
    return f"fqdn:{value}"


def _cidrs(values: tuple[str, ...], what: str) -> str:
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise RenderError(f"{what}: {value!r} is not a CIDR") from None
    return ",".join(out)


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value.split("/")[0]))
    except ValueError:
        raise RenderError(f"{what}: {value!r} is not an address") from None


def local_address(config: NodeConfig) -> str:
    """Our underlay address: the public one, else wan0's first address, else any."""
    if config.public_address:
        return _address(config.public_address, "public_address")
    for iface in config.interfaces:
        if iface.kind == "wan" and iface.addresses:
            return _address(iface.addresses[0], f"interface {iface.name}")
    return "%any"


@dataclass(frozen=True)
class Connection:
    name: str
    local_addrs: str
    remote_addrs: str
    proposals: str
    esp_proposals: str
    ike_rekey_s: int  # rekey_time = lifetime - margin; over_time = margin, so the SA ends at its lifetime
    ike_over_s: int
    child_rekey_s: int
    child_life_s: int
    dpd_delay_s: int
    fragmentation: str  # swanctl: yes (RFC 7383 when the peer supports it) | no
    local_auth: str  # swanctl auth: psk | pubkey (signatures, RFC 7427 by default)
    remote_auth: str
    local_cert: str | None
    remote_cert: str | None  # the peer's certificate, pinned
    ca_cert: str | None
    psk_hex: str | None  # this tunnel's key, hex so every byte survives
    local_id: str
    remote_id: str
    local_ts: str
    remote_ts: str
    start_action: str
    dpd_action: str
    close_action: str


def connections(config: NodeConfig, libipsec: bool = False) -> list[Connection]:
    """libipsec: offer only the local selectors that hold an address of this node (forwardable_ts)."""
    if config.ike is None:
        raise RenderError(f"node {config.name}: strongswan implementation needs an ike section")
    ike = config.ike
    try:
        proposals = ike_proposals(ike.ike_proposals)
        esp = esp_proposals(ike.esp_proposals)
    except ProposalError as exc:
        raise RenderError(f"node {config.name}: {exc}") from None
    for value, what in ((ike.ike_lifetime_s, "ike_lifetime_s"), (ike.child_lifetime_s, "child_lifetime_s"),
                        (ike.dpd_interval_s, "dpd_interval_s"), (ike.rekey_margin_s or 1, "rekey_margin_s")):
        if not isinstance(value, int) or value <= 0:
            raise RenderError(f"node {config.name}: {what} must be a positive number of seconds")
    if ike.rekey_margin_s and ike.rekey_margin_s >= min(ike.ike_lifetime_s, ike.child_lifetime_s):
        raise RenderError(f"node {config.name}: rekey_margin_s must be shorter than both lifetimes")
    if not isinstance(ike.fragment_size, int) or not 576 <= ike.fragment_size <= 65535:
        raise RenderError(f"node {config.name}: fragment_size must be an IP datagram size of 576 to 65535 bytes")
    if (ike.auth == "cert" or any(p.auth == "cert" for p in ike.peers)) and ike.pki is None:
        raise RenderError(f"node {config.name}: certificate authentication needs the pki files")
    local_id = identity(ike.local_id)
    local_addr = local_address(config)
    seen: set[str] = set()
    out = []
    for peer in ike.peers:
        if libipsec and peer.local_ts:
            peer = dataclasses.replace(peer, local_ts=forwardable_ts(config, peer.local_ts)[0])
        out.append(_connection(config, peer, local_addr, local_id, proposals, esp, seen))
    return out


def forwardable_ts(config: NodeConfig, local_ts: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, left out) of a peer's local selectors under kernel-libipsec.

    strongSwan 5.9.8's kernel-libipsec routes each outbound policy with a source address taken from
    its local selector and fails the whole child SA ("error installing route with policy", then
    TS_UNACCEPTABLE) when the selector holds no address of this node: a hub's selectors for its
    other branches' LANs. Fixed upstream in 5.9.12 (strongSwan issue #1766). Leaving those out keeps
    the hub's own LANs working; branch-to-branch traffic through such a hub is not carried (and the
    branches' leak guards keep it off the underlay). If none holds an address, all stay (and fail)."""
    own = [ipaddress.ip_interface(a).ip for iface in config.interfaces for a in iface.addresses]
    kept, dropped = [], []
    for ts in local_ts:
        net = ipaddress.ip_network(ts, strict=False)
        (kept if any(a.version == net.version and a in net for a in own) else dropped).append(ts)
    return (tuple(kept), tuple(dropped)) if kept else (local_ts, ())


def _connection(
    config: NodeConfig, peer: PeerConfig, local_addr: str, local_id: str,
    proposals: str, esp: str, seen: set[str],
) -> Connection:
    if not _NAME.match(peer.name):
        raise RenderError(f"peer {peer.name!r}: not usable as a connection name")
    if peer.name in seen:
        raise RenderError(f"peer {peer.name}: listed twice")
    seen.add(peer.name)
    if peer.initiate and not peer.address:
        raise RenderError(f"peer {peer.name}: initiate needs the peer's address")
    local_ts = peer.local_ts or config.lan_subnets
    if not local_ts or not peer.remote_ts:
        raise RenderError(f"peer {peer.name}: needs local and remote traffic selectors")
    ike = config.ike
    assert ike is not None
    psk = peer.psk if peer.psk is not None else ike.psk
    if "psk" in (ike.auth, peer.auth) and not psk:
        raise RenderError(f"peer {peer.name}: empty PSK")
    if peer.auth == "cert" and not peer.cert_file:
        raise RenderError(f"peer {peer.name}: certificate authentication needs the peer's certificate")
    pki = ike.pki
    return Connection(
        name=peer.name,
        local_addrs=local_addr,
        remote_addrs=_address(peer.address, f"peer {peer.name}") if peer.address else "%any",
        proposals=proposals,
        esp_proposals=esp,
        ike_rekey_s=ike.ike_lifetime_s - margin(ike.ike_lifetime_s, ike.rekey_margin_s),
        ike_over_s=margin(ike.ike_lifetime_s, ike.rekey_margin_s),
        child_rekey_s=ike.child_lifetime_s - margin(ike.child_lifetime_s, ike.rekey_margin_s),
        child_life_s=ike.child_lifetime_s,
        dpd_delay_s=ike.dpd_interval_s,
        fragmentation="yes" if ike.fragmentation else "no",
        local_auth=_SWANCTL_AUTH[ike.auth],
        remote_auth=_SWANCTL_AUTH[peer.auth],
        local_cert=pki.cert_file if pki and ike.auth == "cert" else None,
        remote_cert=peer.cert_file if peer.auth == "cert" else None,
        ca_cert=pki.ca_file if pki and peer.auth == "cert" else None,
        psk_hex="0x" + psk.encode().hex() if "psk" in (ike.auth, peer.auth) else None,
        local_id=local_id,
        remote_id=identity(peer.remote_id),
        local_ts=_cidrs(local_ts, f"peer {peer.name} local_ts"),
        remote_ts=_cidrs(peer.remote_ts, f"peer {peer.name} remote_ts"),
        # The initiator brings the tunnel up at load and again after a DPD failure; a responder only
        # answers and forgets dead peers.
        start_action="start" if peer.initiate else "none",
        dpd_action="restart" if peer.initiate else "clear",
        close_action="start" if peer.initiate else "none",
    )


def margin(lifetime: int, rekey_margin: int | None) -> int:
    """How long before the end of a lifetime the SA is rekeyed: the configured margin, else a
    tenth (the agent's default too)."""
    return rekey_margin if rekey_margin else max(1, lifetime // 10)


_SWANCTL_AUTH = {"psk": "psk", "cert": "pubkey"}


def render_swanctl(config: NodeConfig, libipsec: bool = False) -> str:
    return _env().get_template("swanctl.conf.j2").render(
        node=config.name, connections=connections(config, libipsec))


def render_strongswan_conf(
    config: NodeConfig,
    *,
    vici_socket: str = VICI_SOCKET,
    routing_table: int = ROUTING_TABLE,
    libipsec: bool = True,
) -> str:
    """libipsec: ESP in userspace on ipsec0 (kernels without ESP); False: the kernel's XFRM."""
    # kernel-libipsec before kernel-netlink: the first IPsec backend loaded is the one used.
    plugins = CHARON_PLUGINS_HEAD + (("kernel-libipsec",) if libipsec else ()) + CHARON_PLUGINS_TAIL
    ike = config.ike
    return _env().get_template("strongswan.conf.j2").render(
        node=config.name, vici_socket=vici_socket,
        routing_table=routing_table, libipsec=libipsec, plugins=plugins,
        fragment_size=ike.fragment_size if ike is not None else 1280,
        keep_alive=ike.nat_keepalive_s if ike is not None else 20,
        fast_dead=bool(config.extensions.get("redirect")),  # a cluster's client (docs/loadbalancer.md)
    )
