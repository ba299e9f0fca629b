"""What the userspace engine's packet loops dropped, and why: counters only, shown by `status`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Drops:
    no_route: int = 0  # outbound: no SA covers the inner destination
    policy_out: int = 0  # outbound: inner source outside the SA's local selectors
    not_ipv4: int = 0
    unknown_spi: int = 0
    malformed: int = 0  # inbound: too short, bad trailer, invalid inner packet
    policy_in: int = 0
    expired: int = 0  # sequence numbers or hard byte lifetime used up
    send_errors: int = 0
    tun_errors: int = 0
    internal_errors: int = 0  # a packet loop hit a bug and was restarted (see the log)
    keepalives: int = 0
    ike_in: int = 0
