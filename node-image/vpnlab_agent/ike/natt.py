"""NAT traversal that survives (RFC 7296 §2.23, RFC 3948), over an endpoint's IKE SAs. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def peer_moved(sessions: Iterable[Any], spi_in: int, addr: tuple[str, int]) -> bool:
    """The data plane authenticated ESP of child `spi_in` from `addr`, a new address: the IKE SA
    follows, and so do its other child SAs (its PeerMoved event). Only a peer we saw behind a NAT
    may move; False when nothing changed."""
    for s in sessions:
        if spi_in in s.children:
            if not s.nat_remote or addr == s.remote:
                return False
            s.move_peer(addr)
            return True
    return False


def keepalive_targets(sessions: Iterable[Any]) -> list[tuple[str, int]]:
    """Where NAT keepalives go (RFC 3948 §2.3): the peers of established IKE SAs that found us
    behind a NAT."""
    return [s.remote for s in sessions if s.nat_local and s.sk_out is not None and s.children]
