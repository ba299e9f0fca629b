"""How routing contexts change the agent's IKE service and data-plane engine (docs/hsvpn.md)."""

from __future__ import annotations

from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.contexts.config import ContextsConfig, contexts_of


def engine_choice(config: NodeConfig) -> tuple[str, dict[str, Any]]:
    """(engine preference, engine options). hsvpn carries contexts in the userspace engine (a TUN
    per context; the tag needs a trailer the kernel cannot build): `auto` becomes `userspace`
    there, the documented fallback. per-network runs on either engine (`auto` probes the kernel:
    XFRM with a VRF and a mark per context where it has ESP). tunnel-in-tunnel needs nothing of
    the engine."""
    cfg = contexts_of(config.extensions)
    if cfg is None or cfg.method == "tunnel-in-tunnel":
        return config.dataplane, {}
    options = {"contexts": engine_contexts(cfg)}
    return ("userspace" if cfg.method == "hsvpn" else config.dataplane), options


def engine_contexts(cfg: ContextsConfig) -> list[Any]:
    from vpnlab_agent.dataplane.context_tables import ContextSpec

    return [
        ContextSpec(c.name, c.table, {r.peer: (r.local, r.remote) for r in cfg.reach if r.context == c.name})
        for c in cfg.contexts
    ]


def ike_extensions(config: NodeConfig) -> list[Any]:
    cfg = contexts_of(config.extensions)
    if cfg is None or cfg.method == "tunnel-in-tunnel":
        return []
    from vpnlab_agent.contexts.extension import ContextOfPeer, HsvpnExtension

    return [HsvpnExtension(cfg)] if cfg.method == "hsvpn" else [ContextOfPeer(cfg)]
