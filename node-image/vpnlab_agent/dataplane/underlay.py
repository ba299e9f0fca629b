"""The userspace engine's underlay: its MTU, read from the interface that holds our address, and
the /32 routes that keep ESP to a peer off the tunnel.

The engine keeps its TUN MTU at the underlay's less the ESP overhead, so inner packets that fit
the TUN fit the underlay as ESP packets; it reads again when a child SA is installed and after the
kernel refused a UDP GSO batch as too large (EMSGSIZE: `vpnlab link set --mtu` lowered the link
under a running engine).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

from vpnlab_agent.dataplane.base import EngineError
from vpnlab_agent.dataplane.routes import Route
from vpnlab_agent.dataplane.sa_table import SaTable, inside
from vpnlab_agent.rtnl import Rtnl, RtnlError

log = logging.getLogger(__name__)

DEFAULT_MTU = 1500  # when the interface cannot be found (an unbound or unusual address)
OUTER_HEADERS = 20 + 8  # outer IPv4 + UDP (RFC 3948)
RECHECK_S = 1.0  # at most this often after EMSGSIZE


class UnderlayMtu:
    def __init__(self, fixed: int | None = None) -> None:
        self.fixed = fixed  # given by the caller: never read
        self.mtu = fixed or DEFAULT_MTU
        self._checked = 0.0

    def read(self, local_addr: str) -> int:
        if self.fixed is None and local_addr:
            try:
                with Rtnl() as rt:
                    found = {a.index for a in rt.addresses(socket.AF_INET) if a.address == local_addr}
                    mtus = [link.mtu for link in rt.links() if link.index in found]
                    if mtus:
                        self.mtu = mtus[0] or DEFAULT_MTU
            except OSError as e:
                log.warning("cannot read the underlay MTU (%s); keeping %d", e, self.mtu)
        return self.mtu

    @property
    def max_datagram(self) -> int:
        """The largest UDP payload that leaves in one IP packet."""
        return self.mtu - OUTER_HEADERS

    def due(self) -> bool:
        """Rate limit of re-reading after EMSGSIZE (a burst of refused batches reads once)."""
        now = time.monotonic()
        if now - self._checked < RECHECK_S:
            return False
        self._checked = now
        return True


def peer_pins(table: SaTable, pins: dict[str, Route]) -> list[Route]:
    """If a remote selector covers the peer itself (e.g. 0.0.0.0/0), keep ESP to it off the tunnel:
    a /32 via the underlay route it has now (remembered in `pins`)."""
    out = []
    for entry in table.outbound_entries():
        peer = entry.sa.remote_addr
        if not inside(int(ipaddress.IPv4Address(peer)), entry.remote_nets):
            continue
        if peer not in pins:
            try:
                with Rtnl() as rt:
                    found = rt.route_to(peer)
            except RtnlError as e:
                raise EngineError(f"no underlay route to peer {peer}: {e}") from e
            pins[peer] = Route(f"{peer}/32", found.oif, gateway=found.gateway)
        out.append(pins[peer])
    return out
