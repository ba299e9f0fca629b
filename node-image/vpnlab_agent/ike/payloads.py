"""IKEv2 payloads and messages (RFC 7296 §3) as plain data; codec.py turns them into bytes and back."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, Union

from vpnlab_agent.ike.constants import FLAG_INITIATOR, FLAG_RESPONSE, PayloadType

@dataclass(slots=True)
class Transform:
    type: int  # TransformType
    id: int  # EncrId / PrfId / IntegId / DhGroup / EsnId
    key_length: int | None = None  # Key Length attribute in bits (ENCR only)
    # Attributes other than Key Length, raw. A transform carrying any must not be selected
    # (RFC 7296 §3.3.6); kept so re-encoding is exact.
    other_attrs: bytes = b""


@dataclass(slots=True)
class Proposal:
    num: int
    protocol: int  # ProtocolId
    spi: bytes  # b"" in an initial IKE proposal, 8 bytes for IKE rekey, 4 bytes for ESP
    transforms: list[Transform]


@dataclass(slots=True)
class SA:
    payload_type: ClassVar[int] = PayloadType.SA
    proposals: list[Proposal]


@dataclass(slots=True)
class KE:
    payload_type: ClassVar[int] = PayloadType.KE
    group: int  # DhGroup
    data: bytes


@dataclass(slots=True)
class Nonce:
    payload_type: ClassVar[int] = PayloadType.NONCE
    data: bytes


@dataclass(slots=True)
class IDi:
    payload_type: ClassVar[int] = PayloadType.IDi
    id_type: int  # IdType
    data: bytes


@dataclass(slots=True)
class IDr:
    payload_type: ClassVar[int] = PayloadType.IDr
    id_type: int
    data: bytes


@dataclass(slots=True)
class Auth:
    payload_type: ClassVar[int] = PayloadType.AUTH
    method: int  # AuthMethod
    data: bytes


@dataclass(slots=True)
class Notify:
    payload_type: ClassVar[int] = PayloadType.NOTIFY
    protocol: int  # ProtocolId, 0 when not about an SA
    spi: bytes
    notify_type: int  # NotifyType (or a private/unknown value)
    data: bytes = b""


@dataclass(slots=True)
class Delete:
    payload_type: ClassVar[int] = PayloadType.DELETE
    protocol: int  # ProtocolId.IKE (no SPIs: deletes this IKE SA) or ESP
    spis: list[bytes]


@dataclass(slots=True)
class VendorId:
    payload_type: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes


@dataclass(slots=True, frozen=True)
class TrafficSelector:
    """One address range selector. IPv4 by default; an IPv6 start/end makes it TS_IPV6_ADDR_RANGE."""

    start: str
    end: str
    ip_proto: int = 0
    start_port: int = 0
    end_port: int = 65535


@dataclass(slots=True)
class TSi:
    payload_type: ClassVar[int] = PayloadType.TSi
    selectors: list[TrafficSelector]


@dataclass(slots=True)
class TSr:
    payload_type: ClassVar[int] = PayloadType.TSr
    selectors: list[TrafficSelector]


@dataclass(slots=True)
class Cert:  # RFC 7296 §3.6
    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int  # CertEncoding
    data: bytes  # X.509 signature certificate: its DER


@dataclass(slots=True)
class CertReq:  # RFC 7296 §3.7
    payload_type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes  # X.509: SHA-1 hashes of the trusted CAs' SubjectPublicKeyInfo, concatenated


@dataclass(slots=True)
class UnknownPayload:
    """A payload we do not interpret (CP, a future type, ...). Non-critical ones are
    skipped by the state machine; unknown critical ones never get here (decode raises)."""

    payload_type: int
    critical: bool
    body: bytes


Payload = Union[SA, KE, Nonce, IDi, IDr, Auth, Cert, CertReq, Notify, Delete, VendorId, TSi, TSr, UnknownPayload]
P = TypeVar("P")


@dataclass(slots=True)
class Message:
    spi_i: bytes  # 8 bytes
    spi_r: bytes  # 8 bytes, zero in the first IKE_SA_INIT request
    exchange: int  # ExchangeType
    message_id: int
    initiator: bool  # I flag: sent by the original initiator of the IKE SA
    response: bool  # R flag
    payloads: list = field(default_factory=list)

    def find(self, cls: type[P]) -> P | None:
        for p in self.payloads:
            if type(p) is cls:
                return p
        return None

    def find_all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if type(p) is cls]

    def notifies(self, notify_type: int) -> list[Notify]:
        return [p for p in self.payloads if type(p) is Notify and p.notify_type == notify_type]


@dataclass(slots=True, frozen=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def initiator(self) -> bool:
        return bool(self.flags & FLAG_INITIATOR)

    @property
    def response(self) -> bool:
        return bool(self.flags & FLAG_RESPONSE)


# --- traffic selector helpers ------------------------------------------------------------------


def ts_from_cidr(cidr: str, ip_proto: int = 0, start_port: int = 0, end_port: int = 65535) -> TrafficSelector:
    net = ipaddress.ip_network(cidr, strict=False)
    return TrafficSelector(
        str(net.network_address), str(net.broadcast_address), ip_proto, start_port, end_port
    )


def ts_to_cidrs(ts: TrafficSelector) -> list[str]:
    """The address range as the smallest list of CIDRs covering exactly it (ports/proto ignored)."""
    start = ipaddress.ip_address(ts.start)
    end = ipaddress.ip_address(ts.end)
    if start.version != end.version or start > end:
        return []
    return [str(n) for n in ipaddress.summarize_address_range(start, end)]


