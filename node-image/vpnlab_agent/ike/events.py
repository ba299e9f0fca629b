"""What an IkeEndpoint tells its owner: frozen records popped with `IkeEndpoint.next_event()`.

The owner (io/ike_service.py) installs ChildSAUp into the data plane, removes ChildSADeleted, and
logs the rest. Events are plain data so tests can compare them and the agent can log them as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpnlab_agent.sa import ChildSA


@dataclass(frozen=True)
class IkeSAUp:
    peer: str
    spi_i: bytes
    spi_r: bytes
    initiator: bool
    suite_desc: str  # e.g. "aes128gcm16-prfsha256-ecp256"
    remote_addr: tuple[str, int]
    rekey: bool = False  # True when this IKE SA replaces an older one (children moved to it)
    # What the peer announced, from authenticated messages: its Vendor IDs, and the status notify
    # types it sent in IKE_SA_INIT and IKE_AUTH (e.g. REDIRECT_SUPPORTED).
    vendor_ids: tuple[bytes, ...] = ()
    notifies: tuple[int, ...] = ()


@dataclass(frozen=True)
class ChildSAUp:
    child: ChildSA
    rekey_of: int | None  # spi_in of the child SA this one replaces (make-before-break), else None


@dataclass(frozen=True)
class ChildSADeleted:
    peer: str
    spi_in: int
    reqid: int


@dataclass(frozen=True)
class PeerMoved:
    """The peer's NAT mapping changed (RFC 7296 §2.23): an authenticated message came from `remote`.
    The data plane must send the child SAs' ESP there from now on."""

    peer: str
    remote: tuple[str, int]
    spi_ins: tuple[int, ...]


@dataclass(frozen=True)
class IkeSADown:
    peer: str
    reason: str  # DEAD when the peer stopped answering (retransmissions or DPD used up)


DEAD = "peer not responding"


@dataclass(frozen=True)
class AuthFailed:
    peer: str  # configured peer name, or the identity the peer claimed when it matched no peer
    addr: tuple[str, int]
    reason: str


@dataclass(frozen=True)
class NotifyReceived:
    """A private notify (type >= VPNLAB_PRIVATE_BASE) from a peer that announced our Vendor ID."""

    peer: str
    notify_type: int
    data: bytes


@dataclass(frozen=True)
class InformationalDone:
    """An INFORMATIONAL request we sent (send_notify / send_informational, by `ref`) was answered
    (ok) or will never be (the IKE SA went away first)."""

    peer: str
    ref: int
    ok: bool


@dataclass(frozen=True)
class Redirected:
    """An IKE SA to `peer` was given up for one to `new_addr` (IkeEndpoint.reconnect, RFC 5685)."""

    peer: str
    new_addr: str


Event = (IkeSAUp | ChildSAUp | ChildSADeleted | IkeSADown | AuthFailed | NotifyReceived
         | InformationalDone | Redirected)
