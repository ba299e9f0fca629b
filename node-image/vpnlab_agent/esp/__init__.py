"""ESP (RFC 4303) packet codec and anti-replay window; UDP encapsulation (RFC 3948) lives in the engines."""

from vpnlab_agent.esp.ciphers import BACKEND, PacketBuffer
from vpnlab_agent.esp.codec import (
    AuthenticationFailed,
    EspError,
    EspInbound,
    EspOutbound,
    MalformedPacket,
    ReplayedPacket,
    SequenceOverflow,
    max_inner_len,
)
from vpnlab_agent.esp.replay import ReplayWindow

__all__ = [
    "BACKEND", "PacketBuffer", "AuthenticationFailed", "EspError", "EspInbound", "EspOutbound",
    "MalformedPacket", "ReplayedPacket", "SequenceOverflow", "max_inner_len", "ReplayWindow",
]
