"""A shortcut's state on a branch, and the actions the branch's mesh logic asks for. Pure data."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

IKE_PORT = 500


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendNotify:
    peer: str
    notify_type: int
    body: bytes


@dataclass(frozen=True)
class BuildShortcut:
    """Add a dynamic IKE peer and initiate to it (we are A)."""

    peer: str
    remote_id: str
    address: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    port: int = IKE_PORT  # another port: B's NAT mapping; IKE_SA_INIT then goes from our UDP 4500


@dataclass(frozen=True)
class Punch:
    """Send one NAT keepalive (RFC 3948 §2.3: a single 0xFF byte, nothing else) from our UDP 4500
    socket to `addr`, so our NAT opens a mapping towards the peer's NAT mapping (hole punching)."""

    peer: str
    addr: tuple[str, int]


@dataclass(frozen=True)
class AcceptShortcut:
    """Add a dynamic IKE peer that may initiate to us (we are B)."""

    peer: str
    remote_id: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]


@dataclass(frozen=True)
class DeleteShortcut:
    """Delete the IKE SA with the peer (INFORMATIONAL DELETE) if any, and forget the dynamic peer."""

    peer: str
    reason: str


Action = SendNotify | BuildShortcut | AcceptShortcut | DeleteShortcut | Punch


class State(enum.Enum):
    REQUESTED = "requested"  # B: request sent to the hub, waiting for its ACK
    AWAITING = "awaiting"  # B: A is named, its IKE_SA_INIT may come
    BUILDING = "building"  # A: IKE_SA_INIT sent to B
    UP = "up"


ACTIVE = (State.REQUESTED, State.AWAITING, State.BUILDING, State.UP)


@dataclass
class Shortcut:
    request_id: int
    role: str  # "requester" (B: we saw the session) | "initiator" (A: we build the IKE SA) | "acceptor" (A, reversed)
    state: State
    hub: str
    local_subnets: tuple[str, ...]
    remote_subnets: tuple[str, ...]
    peer: str | None = None  # the other branch, once known
    address: str | None = None
    port: int = IKE_PORT  # the peer's IKE port: its NAT mapping's when punching
    punch_to: tuple[str, int] | None = None  # the peer's NAT mapping we punch towards
    punch_at: list[float] = field(default_factory=list)  # when the next punches are due
    punches: int = 0
    since: float = 0.0  # when the current state began
    last_traffic: float = 0.0
    last_bytes: int = -1
    retries: int = 0  # initiator: IKE attempts that failed so far
    retry_at: float | None = None
    timeline: dict[str, float] = field(default_factory=dict)

    def mark(self, event: str, t: float) -> None:
        self.timeline.setdefault(event, t)

    def to_status(self, now: float) -> dict[str, Any]:
        return {
            "id": f"{self.request_id:08x}",
            "peer": self.peer,
            "role": self.role,
            "state": self.state.value,
            "hub": self.hub,
            "local": list(self.local_subnets),
            "remote": list(self.remote_subnets),
            "address": self.address if self.port == IKE_PORT else f"{self.address}:{self.port}",
            "punch": {"to": f"{self.punch_to[0]}:{self.punch_to[1]}", "sent": self.punches} if self.punch_to else None,
            "idle_s": round(now - self.last_traffic, 1) if self.state is State.UP else None,
            "timeline": dict(self.timeline),
        }
