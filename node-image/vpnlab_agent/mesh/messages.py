"""Bodies of the private IKEv2 notifies that carry mesh signalling (RFC 7296 private range).

They only ever travel inside established IKE SAs (INFORMATIONAL, encrypted and integrity protected
by the SK payload), and only to peers that announced our Vendor ID; this module is just the bytes.

Layout (network byte order), every body:  version (1) | request id (4) | fields of the kind
  name        = length (1) | ASCII FQDN (1..253)
  address     = 4 bytes IPv4; 0.0.0.0 means "no public address"
  mapping     = 4 bytes IPv4 | port (2): an IKE SA's far end as the hub sees it; 0.0.0.0:0 = none
  subnet list = count (1, 1..MAX_SUBNETS) | count x (4-byte network, 1-byte prefix length)
  MeshRequest  (REQUEST B->hub, RELAY hub->A): requester name | requester address | requester
               subnets | wanted subnets (where the session came from) | target name (empty in REQUEST)
               | NAT flags (1) | requester mapping (none in REQUEST; the hub fills it in)
  MeshAck      (ACK hub->B): requester name | target name | target subnets | target mapping
  MeshRefusal  (REFUSE, either way): requester name | target name (may be empty) | reason (1)
  MeshMapping  (MAPPING hub->branch): mapping (where the hub sees the branch's IKE SA come from);
               branch->hub with none: "tell me" (the hub's first one may come before we listen)
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from vpnlab_agent.ike.constants import NotifyType

VERSION = 2  # 2: NAT flags and mappings, for hole punching (mesh/punch.py)
MAX_SUBNETS = 16
MAX_NAME = 253

BASE = int(NotifyType.VPNLAB_PRIVATE_BASE)


class MeshNotify(enum.IntEnum):
    REQUEST = BASE + 1  # receiving branch B -> hub: "build me a shortcut to whoever owns these subnets"
    RELAY = BASE + 2  # hub -> initiating branch A: B's request, with B named as target of A's tunnel
    ACK = BASE + 3  # hub -> B: relayed; here is who A is, so B can accept A's IKE_SA_INIT
    REFUSE = BASE + 4  # A -> hub -> B, or hub -> B: no shortcut, and why
    MAPPING = BASE + 5  # hub -> branch: the public address and port it sees the branch's IKE SA from; or a query


class NatFlag(enum.IntFlag):
    """What a requester says about its own NAT (REQUEST, RELAY)."""

    BEHIND_NAT = 1
    SYMMETRIC = 2  # address-and-port-dependent mapping: the hub's view is useless to others
    PUNCH = 4  # it takes part in hole punching (mesh key hole_punching)


class RefuseReason(enum.IntEnum):
    NO_PUBLIC_ADDRESS = 1
    LIMIT_REACHED = 2
    PEER_NOT_CAPABLE = 3
    UNKNOWN_SUBNET = 4
    PEER_DOWN = 5
    MESH_DISABLED = 6
    TIMEOUT = 7
    SETUP_FAILED = 8
    INVALID = 9
    REQUESTER_SYMMETRIC = 10  # the branch that asked is behind a symmetric NAT
    INITIATOR_SYMMETRIC = 11  # the branch that would initiate is behind a symmetric NAT
    SAME_NAT = 12  # both behind one NAT device: they would have to meet at its address (hairpinning)
    REVERSE = 13  # not a refusal: A has a public address and accepts, B (behind a symmetric NAT) initiates

    @property
    def text(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    RefuseReason.NO_PUBLIC_ADDRESS: "no public address: cannot accept a shortcut (behind NAT)",
    RefuseReason.LIMIT_REACHED: "mesh tunnel limit reached",
    RefuseReason.PEER_NOT_CAPABLE: "peer does not support vpnlab mesh (no Vendor ID)",
    RefuseReason.UNKNOWN_SUBNET: "no branch of the hub owns that subnet",
    RefuseReason.PEER_DOWN: "no IKE SA between the hub and that branch",
    RefuseReason.MESH_DISABLED: "mesh is disabled on that router",
    RefuseReason.TIMEOUT: "shortcut not up in time",
    RefuseReason.SETUP_FAILED: "IKE setup of the shortcut failed",
    RefuseReason.INVALID: "request failed validation",
    RefuseReason.REQUESTER_SYMMETRIC: "requester is behind a symmetric NAT (address-and-port-dependent mapping)",
    RefuseReason.INITIATOR_SYMMETRIC: "initiator is behind a symmetric NAT (address-and-port-dependent mapping)",
    RefuseReason.SAME_NAT: "both behind the same NAT device (no hairpinning)",
    RefuseReason.REVERSE: "the requester initiates (behind a symmetric NAT, to a public address)",
}


class MeshMessageError(ValueError):
    """A body that is not what its notify type says; one-line message."""


@dataclass(frozen=True)
class MeshRequest:
    request_id: int
    requester: str  # B's identity (FQDN, our node names)
    requester_addr: str | None  # B's public address; None behind NAT
    requester_subnets: tuple[str, ...]  # B's side of the wanted relationship
    wanted_subnets: tuple[str, ...]  # the other side: where the session came from
    target: str = ""  # set by the hub in RELAY: the branch that owns wanted_subnets
    flags: int = 0  # NatFlag
    mapping: tuple[str, int] | None = None  # set by the hub in RELAY: B's IKE SA as the hub sees it


@dataclass(frozen=True)
class MeshAck:
    request_id: int
    requester: str
    target: str
    target_subnets: tuple[str, ...]
    target_mapping: tuple[str, int] | None = None  # A's IKE SA as the hub sees it


@dataclass(frozen=True)
class MeshRefusal:
    request_id: int
    requester: str
    target: str
    reason: RefuseReason


@dataclass(frozen=True)
class MeshMapping:
    request_id: int
    mapping: tuple[str, int] | None  # None: a branch asks the hub for it


MeshMessage = MeshRequest | MeshAck | MeshRefusal | MeshMapping


def encode(msg: MeshMessage) -> bytes:
    out = bytearray(struct.pack("!BI", VERSION, msg.request_id & 0xFFFFFFFF))
    if isinstance(msg, MeshRequest):
        _name(out, msg.requester)
        out += ipaddress.IPv4Address(msg.requester_addr or "0.0.0.0").packed
        _subnets(out, msg.requester_subnets)
        _subnets(out, msg.wanted_subnets)
        _name(out, msg.target, allow_empty=True)
        out.append(int(msg.flags) & 0xFF)
        _mapping(out, msg.mapping)
    elif isinstance(msg, MeshAck):
        _name(out, msg.requester)
        _name(out, msg.target)
        _subnets(out, msg.target_subnets)
        _mapping(out, msg.target_mapping)
    elif isinstance(msg, MeshMapping):
        _mapping(out, msg.mapping)
    elif isinstance(msg, MeshRefusal):
        _name(out, msg.requester)
        _name(out, msg.target, allow_empty=True)
        out.append(int(msg.reason))
    else:
        raise TypeError(f"not a mesh message: {type(msg).__name__}")
    return bytes(out)


def decode(notify_type: int, data: bytes) -> MeshMessage:
    """The message a notify of this type carries; MeshMessageError for anything else."""
    try:
        kind = MeshNotify(notify_type)
    except ValueError:
        raise MeshMessageError(f"notify type {notify_type} is not a mesh notify") from None
    r = _Reader(data)
    version, request_id = r.unpack("!BI")
    if version != VERSION:
        raise MeshMessageError(f"mesh body version {version}, expected {VERSION}")
    msg: MeshMessage
    if kind in (MeshNotify.REQUEST, MeshNotify.RELAY):
        requester = r.name()
        addr = str(ipaddress.IPv4Address(r.take(4)))
        msg = MeshRequest(request_id, requester, None if addr == "0.0.0.0" else addr,
                          r.subnets(), r.subnets(), r.name(allow_empty=True), r.unpack("!B")[0], r.mapping())
    elif kind == MeshNotify.ACK:
        msg = MeshAck(request_id, r.name(), r.name(), r.subnets(), r.mapping())
    elif kind == MeshNotify.MAPPING:
        msg = MeshMapping(request_id, r.mapping())
    else:
        requester, target = r.name(), r.name(allow_empty=True)
        (code,) = r.unpack("!B")
        try:
            reason = RefuseReason(code)
        except ValueError:
            raise MeshMessageError(f"unknown refusal reason {code}") from None
        msg = MeshRefusal(request_id, requester, target, reason)
    if r.pos != len(data):
        raise MeshMessageError(f"{len(data) - r.pos} trailing bytes after a {kind.name} body")
    return msg


# --- encoding helpers --------------------------------------------------------------------------


def _name(out: bytearray, name: str, *, allow_empty: bool = False) -> None:
    raw = name.encode("ascii")
    if not raw and not allow_empty:
        raise MeshMessageError("empty name")
    if len(raw) > MAX_NAME:
        raise MeshMessageError(f"name longer than {MAX_NAME} bytes")
    out.append(len(raw))
    out += raw


def _mapping(out: bytearray, mapping: tuple[str, int] | None) -> None:
    ip, port = mapping or ("0.0.0.0", 0)
    out += ipaddress.IPv4Address(ip).packed + struct.pack("!H", port)


def _subnets(out: bytearray, cidrs: tuple[str, ...]) -> None:
    if not 1 <= len(cidrs) <= MAX_SUBNETS:
        raise MeshMessageError(f"{len(cidrs)} subnets: 1..{MAX_SUBNETS} allowed")
    out.append(len(cidrs))
    for c in cidrs:
        net = ipaddress.IPv4Network(c, strict=True)
        out += net.network_address.packed + bytes([net.prefixlen])


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MeshMessageError("truncated mesh body")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def name(self, *, allow_empty: bool = False) -> str:
        (n,) = self.unpack("!B")
        raw = self.take(n)
        if not n and not allow_empty:
            raise MeshMessageError("empty name")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise MeshMessageError("name is not ASCII") from None
        if not all(ch.isalnum() or ch in "-._" for ch in text):
            raise MeshMessageError(f"name {text!r} has characters an FQDN cannot have")
        return text

    def mapping(self) -> tuple[str, int] | None:
        ip = str(ipaddress.IPv4Address(self.take(4)))
        (port,) = self.unpack("!H")
        if ip == "0.0.0.0" and port == 0:
            return None
        if ip == "0.0.0.0" or port == 0:
            raise MeshMessageError(f"half a mapping: {ip}:{port}")
        return ip, port

    def subnets(self) -> tuple[str, ...]:
        (count,) = self.unpack("!B")
        if not 1 <= count <= MAX_SUBNETS:
            raise MeshMessageError(f"{count} subnets: 1..{MAX_SUBNETS} allowed")
        out = []
        for _ in range(count):
            raw = self.take(5)
            if raw[4] > 32:
                raise MeshMessageError(f"prefix length {raw[4]}")
            try:
                net = ipaddress.IPv4Network((raw[:4], raw[4]), strict=True)
            except ValueError:
                raise MeshMessageError("subnet has host bits set") from None
            out.append(str(net))
        return tuple(out)
