"""`extensions["contexts"]` of the node config: this router's routing contexts (docs/hsvpn.md).

Plain dataclasses and no third-party imports, like vpnlab_agent/config.py: the orchestrator builds
it (vpnlab/nodeconfig_contexts.py), the agent reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

METHODS = ("hsvpn", "tunnel-in-tunnel", "per-network")
VXLAN_PORT = 4789


@dataclass(frozen=True)
class ContextConfig:
    name: str
    number: int  # lab-wide: proposed HSVPN tag, VXLAN VNI offset, XFRM mark
    table: int  # routing table (the VRF's table where the kernel has VRF devices)
    interfaces: tuple[str, ...]  # our LAN interfaces in this context
    lans: tuple[str, ...]  # their CIDRs
    transit: str | None = None  # tunnel-in-tunnel: our address on this context's VXLAN segment
    vni: int = 0  # tunnel-in-tunnel: VXLAN network identifier


@dataclass(frozen=True)
class Reach:
    """What one context reaches through one IKE peer: the per-context traffic selectors."""

    peer: str  # IKE peer name (PeerConfig.name)
    context: str
    local: tuple[str, ...]
    remote: tuple[str, ...]
    via: str | None = None  # tunnel-in-tunnel: the peer's transit address in this context
    endpoint: str | None = None  # tunnel-in-tunnel: the peer's VXLAN endpoint


@dataclass(frozen=True)
class ContextsConfig:
    method: str
    contexts: tuple[ContextConfig, ...] = ()
    reach: tuple[Reach, ...] = ()
    endpoint: str | None = None  # tunnel-in-tunnel: our VXLAN endpoint, a /32 on lo

    def context(self, name: str) -> ContextConfig:
        for c in self.contexts:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContextsConfig:
        if d.get("method") not in METHODS:
            raise ValueError(f"contexts: unknown method {d.get('method')!r} (known: {', '.join(METHODS)})")
        contexts = tuple(
            ContextConfig(**{**c, "interfaces": tuple(c["interfaces"]), "lans": tuple(c["lans"])})
            for c in d.get("contexts", ())
        )
        reach = tuple(Reach(**{**r, "local": tuple(r["local"]), "remote": tuple(r["remote"])}) for r in d.get("reach", ()))
        names = {c.name for c in contexts}
        for r in reach:
            if r.context not in names:
                raise ValueError(f"contexts: peer {r.peer} reaches unknown context {r.context!r}")
        return cls(d["method"], contexts, reach, d.get("endpoint"))


def contexts_of(extensions: dict[str, Any]) -> ContextsConfig | None:
    """The node's contexts, or None when it has none."""
    raw = extensions.get("contexts")
    if not raw or not raw.get("contexts"):
        return None
    return ContextsConfig.from_dict(raw)
