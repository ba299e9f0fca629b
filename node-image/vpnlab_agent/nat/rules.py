"""The nftables script of one NAT device, from its node config's `extensions.nat`. Pure.

- endpoint-independent: port-preserving masquerade, what most home routers do: a branch's UDP
  4500 stays 4500 towards every peer, so a peer told that mapping by a third party can reach it
  (hole punching). On a shared (carrier-grade) device the first branch keeps its ports and the
  n-th gets fixed public ports 500+n and 4500+n for IKE and NAT-T, the same towards every peer.
- symmetric (address-and-port-dependent, RFC 4787): a fully random public port per new mapping,
  so the port a peer learns from the hub is useless to anyone else.
Both filter like a home router: only replies come in. A conntrack timeout object sets how long an
idle UDP mapping lives (the device's `mapping_timeout`), so tests can watch a mapping expire.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

TABLE = "vpnlab_nat"
TYPES = ("endpoint-independent", "symmetric")
IKE_PORTS = (500, 4500)


class NatConfigError(ValueError):
    """extensions.nat is unusable; one-line message."""


@dataclass(frozen=True)
class NatSpec:
    type: str
    mapping_timeout_s: int
    inside: str  # CIDR
    inside_if: str
    outside_if: str
    public: str
    branches: tuple[tuple[str, str], ...]  # (name, inside address), lab order

    @classmethod
    def from_extension(cls, ext: Any) -> NatSpec:
        if not isinstance(ext, dict):
            raise NatConfigError("extensions.nat is missing: this node is not a NAT device")
        try:
            spec = cls(
                type=str(ext["type"]),
                mapping_timeout_s=int(ext["mapping_timeout_s"]),
                inside=str(ipaddress.IPv4Network(ext["inside"])),
                inside_if=str(ext["inside_if"]),
                outside_if=str(ext["outside_if"]),
                public=str(ipaddress.IPv4Address(ext["public"])),
                branches=tuple((str(b["name"]), str(ipaddress.IPv4Address(b["address"]))) for b in ext["branches"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise NatConfigError(f"extensions.nat: {e}") from None
        if spec.type not in TYPES:
            raise NatConfigError(f"extensions.nat.type: {spec.type!r} (known: {', '.join(TYPES)})")
        if spec.mapping_timeout_s <= 0:
            raise NatConfigError("extensions.nat.mapping_timeout_s must be positive")
        for name in (spec.inside_if, spec.outside_if):
            if not name.isascii() or not name.replace("-", "").isalnum():
                raise NatConfigError(f"extensions.nat: bad interface name {name!r}")
        return spec


def render(spec: NatSpec) -> str:
    """An nft script that replaces the device's table as one transaction."""
    t, i, o = spec.mapping_timeout_s, spec.inside_if, spec.outside_if
    fixed: list[str] = []
    if spec.type == "endpoint-independent":
        for n, (_name, addr) in enumerate(spec.branches[1:], start=1):
            for port in IKE_PORTS:
                fixed.append(
                    f'    oifname "{o}" ip saddr {addr} udp sport {port} snat to {spec.public}:{port + n}'
                )
        masq = f'    oifname "{o}" ip saddr {spec.inside} masquerade'
    else:
        masq = f'    oifname "{o}" ip saddr {spec.inside} masquerade fully-random'
    lines = [
        f"table ip {TABLE}",  # create-if-absent, so the delete below never fails
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        "  ct timeout mapping {",
        "    protocol udp; l3proto ip;",
        f"    policy = {{ unreplied: {t}, replied: {t} }}",
        "  }",
        # after conntrack made the entry (priority filter), before it is confirmed: the only
        # moment a timeout policy can be attached to a new mapping
        "  chain timeouts {",
        "    type filter hook prerouting priority filter; policy accept;",
        f'    iifname "{i}" meta l4proto udp ct timeout set "mapping"',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        f'    iifname "{i}" oifname "{o}" ip saddr {spec.inside} accept',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        f'    iifname "{o}" ct state established,related accept',
        f'    iifname "{o}" icmp type echo-request accept',
        f'    iifname "{o}" drop',
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *fixed,
        masq,
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def parse_conntrack(text: str) -> list[dict[str, Any]]:
    """`conntrack -L -p udp` lines -> mappings {inside, public, remote, timeout_s, assured}."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] != "udp":
            continue
        fields: dict[str, list[str]] = {}
        for p in parts[3:]:
            if "=" in p:
                k, v = p.split("=", 1)
                fields.setdefault(k, []).append(v)
        try:
            src, dst, rsrc, rdst = fields["src"][0], fields["dst"][0], fields["src"][1], fields["dst"][1]
            sport, dport, rsport, rdport = fields["sport"][0], fields["dport"][0], fields["sport"][1], fields["dport"][1]
            timeout = int(parts[2])
        except (KeyError, IndexError, ValueError):
            continue
        del rsrc, rsport
        out.append({
            "inside": f"{src}:{sport}",
            "public": f"{rdst}:{rdport}",
            "remote": f"{dst}:{dport}",
            "timeout_s": timeout,
            "assured": "[ASSURED]" in parts,
        })
    return out
