"""ipsec.conf and ipsec.secrets of a libreswan node, rendered from its NodeConfig (jinja2).

One conn per configured peer, named after the peer. A libreswan hub that another one redirects to
(`libreswan: {redirect_to: ...}` there) also serves that hub's clients, under that hub's identity:
they authenticate the gateway they first asked for, as RFC 5685 §6 wants of a redirect target.
pluto 4.10 takes one subnet per side and conn, so several selectors become their smallest supernet
and `narrowing=yes` lets the peer narrow it (a cluster member narrows to its own LANs).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import jinja2

from vpnlab_agent.config import NodeConfig, PeerConfig

from vpnlab.errors import LabError
from vpnlab.topology.model import Lab, Node

CONFIG_PATH = "/etc/ipsec.conf"
SECRETS_PATH = "/etc/ipsec.secrets"

_ENC = {f"aes{b}": f"aes{b}" for b in (128, 192, 256)} | {f"aes{b}gcm16": f"aes_gcm{b}" for b in (128, 192, 256)}
_HASH = {"sha256": "sha2_256", "sha384": "sha2_384", "sha512": "sha2_512",
         "prfsha256": "sha2_256", "prfsha384": "sha2_384", "prfsha512": "sha2_512"}
_DH = {"modp2048": "modp2048", "modp3072": "modp3072", "ecp256": "dh19", "ecp384": "dh20", "curve25519": "dh31"}


@dataclass(frozen=True)
class Conn:
    name: str
    left: str
    left_id: str
    left_subnet: str
    right: str
    right_id: str
    right_subnet: str
    ike: str
    esp: str
    ike_lifetime: int
    child_lifetime: int
    auto: str
    accept_redirect: bool = False
    redirect_to: str | None = None


def supernet(cidrs: tuple[str, ...]) -> str:
    """The smallest IPv4 network that holds every one of cidrs."""
    nets = [ipaddress.ip_network(c) for c in cidrs] or [ipaddress.ip_network("0.0.0.0/0")]
    net = nets[0]
    while not all(n.subnet_of(net) for n in nets):  # type: ignore[arg-type]
        net = net.supernet()
    return str(net)


def ike_proposal(proposal: str) -> str:
    """strongSwan syntax → pluto's ENCR-HASH-DH, where HASH is the PRF and (CBC) the integrity."""
    from vpnlab_agent.ike.proposals import canonical

    tokens = canonical(proposal, esp=False).split("-")
    enc = [_ENC[t] for t in tokens if t in _ENC]
    hashes = list(dict.fromkeys(_HASH[t] for t in tokens if t in _HASH))
    dh = [_DH[t] for t in tokens if t in _DH]
    if len(enc) != 1 or len(hashes) != 1 or len(dh) != 1:
        raise ValueError(f"IKE proposal {proposal!r}: a libreswan node takes one cipher, one hash "
                         f"(PRF and integrity alike) and one DH group per proposal")
    return f"{enc[0]}-{hashes[0]}-{dh[0]}"


def esp_proposal(proposal: str) -> str:
    from vpnlab_agent.ike.proposals import canonical

    tokens = canonical(proposal, esp=True).split("-")
    if any(t in _DH for t in tokens):
        raise ValueError(f"ESP proposal {proposal!r}: PFS groups are not rendered for libreswan nodes")
    enc = [_ENC[t] for t in tokens if t in _ENC]
    integ = [_HASH[t] for t in tokens if t in _HASH]
    return "-".join(enc[:1] + integ[:1])


def _conn(config: NodeConfig, peer: PeerConfig, *, name: str, local_id: str, accept_redirect: bool,
          redirect_to: str | None) -> Conn:
    ike = config.ike
    assert ike is not None
    return Conn(
        name=name,
        left=config.public_address or "%defaultroute",
        left_id=local_id,
        left_subnet=supernet(peer.local_ts),
        right=peer.address or "%any",
        right_id=peer.remote_id,
        right_subnet=supernet(peer.remote_ts),
        ike=",".join(ike_proposal(p) for p in ike.ike_proposals),
        esp=",".join(esp_proposal(p) for p in ike.esp_proposals),
        ike_lifetime=ike.ike_lifetime_s,
        child_lifetime=ike.child_lifetime_s,
        auto="start" if peer.initiate else "add",
        accept_redirect=peer.initiate and accept_redirect,
        redirect_to=None if peer.initiate else redirect_to,
    )


def served_for(lab: Lab, node: Node) -> list[Node]:
    """The libreswan hubs that redirect their clients to `node`."""
    return [n for n in lab.routers if n.libreswan is not None and n.libreswan.redirect_to == node.name]


def conns(lab: Lab, node: Node, config: NodeConfig) -> list[Conn]:
    from vpnlab.nodeconfig import build_node_config

    settings = node.libreswan
    assert settings is not None and config.ike is not None
    target = lab.node(settings.redirect_to) if settings.redirect_to else None
    at_auth = str(target.public_address) if target is not None and settings.redirect == "auth" else None
    out = [_conn(config, p, name=p.name, local_id=config.ike.local_id, accept_redirect=settings.accept_redirect,
                 redirect_to=at_auth) for p in config.ike.peers]
    for other in served_for(lab, node):
        theirs = build_node_config(lab, other)
        assert theirs.ike is not None
        out += [_conn(config, p, name=f"{p.name}-via-{other.name}", local_id=theirs.ike.local_id,
                      accept_redirect=False, redirect_to=None) for p in theirs.ike.peers if not p.initiate]
    return out


def secrets(lab: Lab, node: Node, config: NodeConfig) -> str:
    """One PSK line per conn: `@us @them : PSK "key"` (the pair's key, as our agent picks it)."""
    assert config.ike is not None
    lines = [f"# Rendered by vpnlab for {node.name}: one line per conn"]
    pairs = [(config.ike.local_id, p) for p in config.ike.peers]
    from vpnlab.nodeconfig import build_node_config

    for other in served_for(lab, node):
        theirs = build_node_config(lab, other)
        assert theirs.ike is not None
        pairs += [(theirs.ike.local_id, p) for p in theirs.ike.peers if not p.initiate]
    for local_id, peer in pairs:
        key = peer.psk if peer.psk is not None else config.ike.psk
        if '"' in key or "\n" in key:
            raise LabError(f"node {node.name}: the PSK towards {peer.name} holds a quote or newline, "
                           "which ipsec.secrets cannot carry")
        lines.append(f'@{local_id} @{peer.remote_id} : PSK "{key}"')
    return "\n".join(lines) + "\n"


def render(lab: Lab, node: Node, config: NodeConfig) -> dict[str, str]:
    """{path in the container: text} for ipsec.conf and ipsec.secrets."""
    settings = node.libreswan
    assert settings is not None
    target = lab.node(settings.redirect_to) if settings.redirect_to else None
    env = jinja2.Environment(loader=jinja2.PackageLoader("vpnlab.kinds", "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    text = env.get_template("ipsec.conf.j2").render(
        lab=lab.name, node=node.name, conns=conns(lab, node, config),
        global_redirect_to=str(target.public_address) if target is not None and settings.redirect == "init" else None,
    )
    return {CONFIG_PATH: text, SECRETS_PATH: secrets(lab, node, config)}
