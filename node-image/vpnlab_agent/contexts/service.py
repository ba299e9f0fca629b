"""The contexts service: makes this router's routing contexts at start, removes them at stop.

Runs before the IKE service, so every context's table (with its final unreachable route) exists
before any tunnel comes up: no packet of a context is ever routed in main meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.contexts import routing
from vpnlab_agent.contexts.config import ContextsConfig
from vpnlab_agent.control import ControlError

log = logging.getLogger(__name__)

UNDERLAY_MTU = 1500


def tunnel_mtu() -> int:
    """Inner MTU of one IPsec tunnel (ESP-in-UDP, AES-GCM): what a VXLAN inside it may use."""
    from vpnlab_agent.dataplane.userspace import OUTER_HEADERS, _GCM
    from vpnlab_agent.esp.codec import max_inner_len

    return max_inner_len(UNDERLAY_MTU - OUTER_HEADERS, _GCM)


class ContextService:
    name = "contexts"

    def __init__(self, config: NodeConfig, contexts: ContextsConfig, *, ipr: Any = None, engine: Any = None) -> None:
        self.config, self.contexts = config, contexts
        self.engine = engine  # the userspace engine's per-context SAs and counters, for status
        self._ipr = ipr
        self._own_ipr = ipr is None
        self._applied = routing.Applied()
        self.mode = ""  # "vrf" | "rules", decided at start by probing

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._start)

    def _start(self) -> None:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        # TUN devices come and go with the userspace engine, and a VRF would flush their routes when
        # they join it: it uses rules. VRF devices carry tunnel-in-tunnel and the kernel XFRM
        # engine's contexts (per-network), which need no device of the engine's (docs/hsvpn.md).
        tuns = self.contexts.method != "tunnel-in-tunnel" and not self._kernel_engine()
        vrf = not tuns and routing.vrf_available(self._ipr)
        self.mode = "vrf" if vrf else "rules"
        steps = routing.plan(self.contexts, vrf=vrf, tunnel_mtu=tunnel_mtu(), extra_devices=tuns)
        log.info("contexts: %d (%s), method %s", len(self.contexts.contexts), self.mode, self.contexts.method)
        routing.apply(self._ipr, steps, self._applied)

    def _kernel_engine(self) -> bool:
        return getattr(self.engine, "name", None) == "xfrm"

    async def stop(self) -> None:
        if self._ipr is None:
            return
        routing.undo(self._ipr, self._applied)
        if self._own_ipr:
            self._ipr.close()
            self._ipr = None

    async def retag(self, peer: str, context: str, tag: int) -> dict[str, Any]:
        """Fault injection (docs/hsvpn.md): from now until the SA is rekeyed, our packets of
        `context` to `peer` carry `tag` instead of the negotiated one, so a test can check that
        the peer drops and counts a forged or unknown tag. It changes only what we send."""
        plane = getattr(self.engine, "ctx", None)
        if self.contexts.method != "hsvpn" or plane is None:
            raise ControlError("retag: only the userspace engine of an hsvpn router sends tags")
        if context not in {c.name for c in self.contexts.contexts}:
            raise ControlError(f"retag: no context {context!r} here")
        n = plane.retag(peer, context, tag)
        if not n:
            raise ControlError(f"retag: no SA to {peer} carries {context}")
        return {"peer": peer, "context": context, "tag": tag, "sas": n}

    def status(self) -> dict[str, Any]:
        stats = self._device_stats()
        engine = (self.engine.status().get("contexts") or {}) if self.engine is not None else {}
        out = []
        for c in self.contexts.contexts:
            if self.contexts.method == "tunnel-in-tunnel":
                carrier: str | None = routing.vxlan_device(c.name)
            else:  # the kernel engine's SAs carry a context with no device of their own
                carrier = None if self._kernel_engine() else routing.tun_device(c.name)
            out.append({
                "name": c.name, "table": c.table, "number": c.number, "lans": list(c.lans),
                "interfaces": list(c.interfaces), "device": carrier, **stats.get(carrier or "", {}),
                "peers": sorted({r.peer for r in self.contexts.reach if r.context == c.name}),
                "sas": (engine.get("sas") or {}).get(c.name, []),
            })
        drops = {k: engine[k] for k in ("tag_dropped", "no_route", "policy_in") if k in engine}
        return {"method": self.contexts.method, "mode": self.mode, "contexts": out, "drops": drops}

    def _device_stats(self) -> dict[str, dict[str, int]]:
        if self._ipr is None:
            return {}
        out: dict[str, dict[str, int]] = {}
        try:
            for link in self._ipr.get_links():
                st = link.get_attr("IFLA_STATS64") or {}
                out[link.get_attr("IFLA_IFNAME")] = {
                    "packets_in": st.get("rx_packets", 0), "bytes_in": st.get("rx_bytes", 0),
                    "packets_out": st.get("tx_packets", 0), "bytes_out": st.get("tx_bytes", 0),
                }
        except Exception:  # noqa: BLE001 - status must answer even if netlink hiccups
            return {}
        return out
