"""The data-plane engine interface: what the IKE service drives, whatever carries the ESP packets.

Two engines implement it: `userspace.UserspaceEngine` (ESP-in-UDP over a TUN device, for kernels
without ESP, as on the lab machines) and `xfrm.XfrmEngine` (kernel XFRM states and policies).
`probe.select_engine()` picks one by probing the kernel, unless the topology forces it.

Both engines always use UDP encapsulation (RFC 3948) on one UDP socket (port 4500) that the engine
owns: ESP packets (SPI != 0) are the engine's business, IKE messages (non-ESP marker, four zero bytes)
are handed to the IKE service through `on_ike`, without the marker.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Callable
from typing import Any, ClassVar

from vpnlab_agent.ike.constants import NATT_PORT
from vpnlab_agent.sa import ChildSA, SACounters

# Called with (ike_message_without_marker, (peer_ip, peer_port)). Engines may call it from any
# thread: the IKE service must hand it over to its event loop (loop.call_soon_threadsafe).
IkeHandler = Callable[[bytes, tuple[str, int]], None]

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"
PeerMovedHandler = Callable[[int, tuple[str, int]], None]


class EngineError(Exception):
    """The engine cannot do what was asked (socket, TUN or netlink failure); one-line message."""


class Engine(abc.ABC):
    name: ClassVar[str]  # "userspace" | "xfrm": shown by inspect

    def __init__(self, *, route_src: str | None = None) -> None:
        # Source address for routes to remote selectors: the router's first LAN address, so that
        # traffic the router itself originates falls inside the negotiated traffic selectors.
        self.route_src = route_src
        self._sock: socket.socket | None = None  # the UDP encapsulation socket, once open
        self._ike_out = 0

    @abc.abstractmethod
    def open(self, local_addr: str, on_ike: IkeHandler, port: int = NATT_PORT) -> None:
        """Bind the UDP encapsulation socket on local_addr:port and start moving packets."""

    def send_ike(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send one IKE message from the encapsulation socket, prefixed with the non-ESP marker."""
        sock = self._sock
        if sock is None:
            raise EngineError(f"{self.name} engine is not open")
        try:
            sock.sendto(NON_ESP_MARKER + data, addr)
        except OSError as e:
            raise EngineError(f"{self.name} engine: sending IKE to {addr[0]}:{addr[1]}: {e.strerror or e}") from e
        self._ike_out += 1

    # on_peer_moved(spi_in, addr): set by the IKE layer; the engine calls it (from its own thread)
    # after it authenticated ESP of that SA from an address other than the SA's, and moved the SA.
    on_peer_moved: PeerMovedHandler | None = None

    def send_keepalive(self, addr: tuple[str, int]) -> None:
        """Send one NAT-keepalive (RFC 3948 §2.3: a single 0xFF byte) from the encapsulation socket."""
        sock = self._sock
        if sock is None:
            raise EngineError(f"{self.name} engine is not open")
        try:
            sock.sendto(NAT_KEEPALIVE, addr)
        except OSError as e:
            raise EngineError(f"{self.name} engine: NAT keepalive to {addr[0]}:{addr[1]}: {e.strerror or e}") from e

    def update_peer(self, spi_in: int, addr: tuple[str, int]) -> None:
        """Send the SA's outbound ESP to `addr` from now on (the peer's NAT mapping changed)."""
        raise EngineError(f"the {self.name} engine cannot move an SA to a new peer address")

    @abc.abstractmethod
    def install(self, sa: ChildSA) -> None:
        """Install both directions of a child SA and route sa.remote_ts through it.

        Make-before-break: installing an SA whose reqid is already installed moves outbound traffic
        to the new SA at once, while the old inbound SA keeps accepting until remove(old spi_in).
        """

    @abc.abstractmethod
    def remove(self, spi_in: int) -> None:
        """Remove the SA pair whose inbound SPI is spi_in; drop its routes if no SA of that reqid is left."""

    @abc.abstractmethod
    def counters(self, spi_in: int) -> SACounters:
        """Per-SA byte/packet counters (both ways), replay and authentication drops."""

    def last_inbound(self) -> dict[int, float]:
        """Inbound SPI -> monotonic seconds of its last authentic ESP packet (0.0: none yet), so IKE
        counts ESP as liveness (RFC 7296 §2.4). Empty where the engine cannot tell: then DPD
        checks go out every interval as before (the kernel's XFRM state keeps only its first use)."""
        return {}

    @abc.abstractmethod
    def status(self) -> dict[str, Any]:
        """Machine-readable state for `ctl status`: engine name, device, SA count, global drop counters."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop, remove every SA, route and device this engine created. Idempotent."""
