"""RFC 5685 (IKEv2 redirect) notify payloads: REDIRECT_SUPPORTED, REDIRECT, REDIRECTED_FROM.

Only the bytes (sans-I/O). Layouts (RFC 5685 §8-§10):
  REDIRECT_SUPPORTED  empty data
  REDIRECT            GW Ident Type (1) | GW Ident Len (1) | New Responder GW Identity | Nonce Data
                      (the nonce only in an IKE_SA_INIT response: the initiator's Ni, so an off-path
                      attacker cannot forge a redirect; absent in IKE_AUTH and INFORMATIONAL)
  REDIRECTED_FROM     GW Ident Type (1) | GW Ident Len (1) | Original Responder GW Identity
GW Ident Types: 1 IPv4 address, 2 IPv6 address, 3 FQDN. All three notifies have protocol 0 and no SPI.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from vpnlab_agent.ike.codec import Notify, ParseError
from vpnlab_agent.ike.constants import NotifyType, ProtocolId


class GwIdentType(enum.IntEnum):
    IPV4 = 1
    IPV6 = 2
    FQDN = 3


@dataclass(frozen=True)
class Gateway:
    """A gateway identity as RFC 5685 carries it: an address or an FQDN (kept as text)."""

    kind: GwIdentType
    value: str  # "203.0.113.11", "2001:db8::1" or "gw2.example"

    @classmethod
    def of(cls, value: str) -> Gateway:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            return cls(GwIdentType.FQDN, value)
        return cls(GwIdentType.IPV4 if addr.version == 4 else GwIdentType.IPV6, str(addr))

    def encode(self) -> bytes:
        if self.kind == GwIdentType.FQDN:
            raw = self.value.encode("ascii")
            if not 1 <= len(raw) <= 255:
                raise ValueError(f"FQDN {self.value!r} must be 1..255 bytes")
        else:
            raw = ipaddress.ip_address(self.value).packed
        return bytes((self.kind, len(raw))) + raw

    @property
    def is_address(self) -> bool:
        return self.kind != GwIdentType.FQDN


def _gateway(data: bytes) -> tuple[Gateway, bytes]:
    """The GW identity at the start of `data`, and what follows it."""
    if len(data) < 2:
        raise ParseError(NotifyType.INVALID_SYNTAX, "redirect: GW identity truncated")
    kind, length = data[0], data[1]
    raw, rest = data[2:2 + length], data[2 + length:]
    if len(raw) != length:
        raise ParseError(NotifyType.INVALID_SYNTAX, "redirect: GW identity truncated")
    if kind == GwIdentType.IPV4 and length == 4 or kind == GwIdentType.IPV6 and length == 16:
        return Gateway(GwIdentType(kind), str(ipaddress.ip_address(raw))), rest
    if kind == GwIdentType.FQDN and length:
        try:
            return Gateway(GwIdentType.FQDN, raw.decode("ascii")), rest
        except UnicodeDecodeError:
            pass
    raise ParseError(NotifyType.INVALID_SYNTAX, f"redirect: bad GW identity (type {kind}, length {length})")


def redirect_supported() -> Notify:
    return Notify(ProtocolId.NONE, b"", NotifyType.REDIRECT_SUPPORTED)


def redirect(gateway: Gateway, nonce: bytes = b"") -> Notify:
    return Notify(ProtocolId.NONE, b"", NotifyType.REDIRECT, gateway.encode() + nonce)


def redirected_from(gateway: Gateway) -> Notify:
    return Notify(ProtocolId.NONE, b"", NotifyType.REDIRECTED_FROM, gateway.encode())


def parse_redirect(n: Notify) -> tuple[Gateway, bytes]:
    """REDIRECT data -> (new gateway, nonce data, b"" when absent)."""
    if n.notify_type != NotifyType.REDIRECT:
        raise ValueError(f"notify {n.notify_type} is not REDIRECT")
    return _gateway(n.data)


def parse_redirected_from(n: Notify) -> Gateway:
    if n.notify_type != NotifyType.REDIRECTED_FROM:
        raise ValueError(f"notify {n.notify_type} is not REDIRECTED_FROM")
    gw, rest = _gateway(n.data)
    if rest:
        raise ParseError(NotifyType.INVALID_SYNTAX, "REDIRECTED_FROM: trailing bytes")
    return gw


def find(payloads: list, notify_type: int) -> Notify | None:
    for p in payloads:
        if type(p) is Notify and p.notify_type == notify_type:
            return p
    return None
