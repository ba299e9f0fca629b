"""What the IKE state machine accepts and how it names things: identities, traffic selector
narrowing, proposal helpers. Pure functions, no state."""

from __future__ import annotations

import dataclasses
import functools
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
    In integers, with each CIDR parsed once: a hub's peers offer and allow one selector per branch
    LAN, so with n branches every handshake narrows n selectors against n CIDRs.
    """
    ranges = [_cidr_range(c) for c in allowed]
    out: list[TrafficSelector] = []
    seen: set[tuple[int, int, int]] = set()
    for ts in offered:
        if ts.ip_proto != 0 or ts.start_port != 0 or ts.end_port != 65535:
            continue
        try:
            start, end = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
        except ValueError:
            continue
        version = start.version
        if end.version != version:
            continue
        first, last = int(start), int(end)
        address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        for net_version, net_first, net_last in ranges:
            if net_version != version:
                continue
            lo, hi = max(first, net_first), min(last, net_last)
            if lo <= hi and (version, lo, hi) not in seen:
                seen.add((version, lo, hi))
                out.append(TrafficSelector(str(address(lo)), str(address(hi))))
    return out


@functools.lru_cache(maxsize=4096)
def _cidr_range(cidr: str) -> tuple[int, int, int]:
    """(IP version, first address, last address) of a configured CIDR, as integers."""
    net = ipaddress.ip_network(cidr, strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


def cidrs(selectors: list[TrafficSelector]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for ts in selectors:
        out.update(dict.fromkeys(ts_to_cidrs(ts)))
    return tuple(out)


def selectors_for(cidrs: tuple[str, ...]) -> list[TrafficSelector]:
    return [ts_from_cidr(c) for c in (cidrs or ("0.0.0.0/0",))]


def within(got: list[TrafficSelector], offered: list[TrafficSelector]) -> bool:
    """Every returned selector lies inside one we offered (the responder may only narrow)."""
    offered_cidrs = cidrs(offered)
    return bool(got) and all(narrow([g], offered_cidrs) == [g] for g in got)


# --- proposals ------------------------------------------------------------------------------


def describe(prop: Proposal) -> str:
    """strongSwan-style name of a selected proposal, e.g. "aes128gcm16-prfsha256-ecp256"."""
    return suite_from_proposal(prop).describe()


def with_spi(props: list[Proposal], spi: bytes) -> list[Proposal]:
    return [dataclasses.replace(p, spi=spi) for p in props]


def spi_int(spi: bytes) -> int:
    return int.from_bytes(spi, "big")
