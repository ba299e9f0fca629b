"""What the IKE state machine accepts and how it names things: identities, traffic selector
narrowing, proposal helpers. Pure functions, no state."""

from __future__ import annotations

import dataclasses
import ipaddress

from vpnlab_agent.ike.codec import Proposal, TrafficSelector, ts_from_cidr, ts_to_cidrs
from vpnlab_agent.ike.constants import IdType
from vpnlab_agent.ike.proposals import suite_from_proposal

# --- identities -----------------------------------------------------------------------------


def identity(text: str) -> tuple[int, bytes]:
    """Config identity → (ID type, data): "192.0.2.1" is ID_IPV4_ADDR, "keyid:xyz" (or "@#hex",
    strongSwan's spelling) ID_KEY_ID, anything else ID_FQDN (a leading "@" is dropped)."""
    if text.startswith("keyid:"):
        return IdType.KEY_ID, text[6:].encode()
    if text.startswith("@#"):
        try:
            return IdType.KEY_ID, bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError(f"identity {text!r}: '@#' must be followed by hex digits") from None
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        return IdType.FQDN, text.removeprefix("@").encode()
    return IdType.IPV4_ADDR, addr.packed


def identity_text(id_type: int, data: bytes) -> str:
    """Printable form of a received identity (for logs and AuthFailed events)."""
    if id_type == IdType.IPV4_ADDR and len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    if id_type == IdType.FQDN:
        return data.decode("ascii", "replace")
    if id_type == IdType.KEY_ID:
        return "keyid:" + data.decode("ascii", "replace")
    return f"id{id_type}:{data.hex()}"


# --- traffic selectors ----------------------------------------------------------------------


def narrow(offered: list[TrafficSelector], allowed: tuple[str, ...]) -> list[TrafficSelector]:
    """The parts of the offered selectors inside our allowed CIDRs (RFC 7296 §2.9 narrowing).

    Selectors limited to one protocol or port range are left out: child SAs and both data planes
    match addresses only, so accepting one would carry (and admit) all traffic of its addresses.
    """
    out: list[TrafficSelector] = []
    for ts in offered:
        if ts.ip_proto != 0 or ts.start_port != 0 or ts.end_port != 65535:
            continue
        try:
            start, end = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
        except ValueError:
            continue
        for cidr in allowed:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != start.version:
                continue
            lo, hi = max(start, net.network_address), min(end, net.broadcast_address)
            if lo <= hi:
                sel = TrafficSelector(str(lo), str(hi))
                if sel not in out:
                    out.append(sel)
    return out


def cidrs(selectors: list[TrafficSelector]) -> tuple[str, ...]:
    out: list[str] = []
    for ts in selectors:
        for c in ts_to_cidrs(ts):
            if c not in out:
                out.append(c)
    return tuple(out)


def selectors_for(cidrs: tuple[str, ...]) -> list[TrafficSelector]:
    return [ts_from_cidr(c) for c in (cidrs or ("0.0.0.0/0",))]


def within(got: list[TrafficSelector], offered: list[TrafficSelector]) -> bool:
    """Every returned selector lies inside one we offered (the responder may only narrow)."""
    return bool(got) and all(narrow([g], cidrs(offered)) == [g] for g in got)


# --- proposals ------------------------------------------------------------------------------


def describe(prop: Proposal) -> str:
    """strongSwan-style name of a selected proposal, e.g. "aes128gcm16-prfsha256-ecp256"."""
    return suite_from_proposal(prop).describe()


def with_spi(props: list[Proposal], spi: bytes) -> list[Proposal]:
    return [dataclasses.replace(p, spi=spi) for p in props]


def spi_int(spi: bytes) -> int:
    return int.from_bytes(spi, "big")
