"""The hub's per-pair forwarding counters: bytes and packets it forwards from one branch LAN to
another (in from the tunnel device and out to it again), as nftables counters in the hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

TABLE = "vpnlab_mesh_hub"


@dataclass(frozen=True)
class Pair:
    src: str  # branch name
    dst: str
    src_net: str
    dst_net: str

    @property
    def tag(self) -> str:
        return f"{self.src}>{self.dst} {self.src_net}>{self.dst_net}"


def pairs(branches: dict[str, tuple[str, ...]]) -> list[Pair]:
    out = []
    for a, a_nets in branches.items():
        for b, b_nets in branches.items():
            if a != b:
                out.extend(Pair(a, b, sn, dn) for sn in a_nets for dn in b_nets)
    return out


def ruleset(pair_list: list[Pair], device: str = "ipsec0") -> str:
    """An idempotent nft script: one counting rule per ordered (source LAN, destination LAN) pair."""
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{", "  chain forward {",
             "    type filter hook forward priority -10; policy accept;"]
    for p in pair_list:
        lines.append(f'    iifname "{device}" oifname "{device}" ip saddr {p.src_net} ip daddr {p.dst_net} '
                     f'counter comment "{p.tag}"')
    # Branch-to-branch traffic leaves the hub by the device it came in on, so the kernel would
    # answer with ICMP redirects that no branch can use (/proc/sys is read-only in a container).
    lines += ["  }", "  chain output {", "    type filter hook output priority 0; policy accept;",
              f'    oifname "{device}" icmp type redirect counter drop comment "no redirects into tunnels"',
              "  }", "}", ""]
    return "\n".join(lines)


def parse_counters(nft_json: str) -> dict[tuple[str, str], tuple[int, int]]:
    """{(src branch, dst branch): (packets, bytes)} from `nft -j list table ip vpnlab_mesh_hub`."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for item in json.loads(nft_json).get("nftables", []):
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        names = rule["comment"].split(" ", 1)[0].split(">")
        if len(names) != 2:
            continue
        for expr in rule.get("expr", []):
            c = expr.get("counter") if isinstance(expr, dict) else None
            if c is not None:
                key = (names[0], names[1])
                p, b = out.get(key, (0, 0))
                out[key] = (p + int(c.get("packets", 0)), b + int(c.get("bytes", 0)))
    return out
