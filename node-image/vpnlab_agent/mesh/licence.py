"""Mesh tunnel limits per device category (the vendor's licence table, see docs/mesh.md).

Mesh tunnels are counted apart from the ordinary VPN tunnels. Hub-side devices are capped at
HUB_CAP mesh tunnels whatever their category; a topology may set `mesh.max_tunnels` lower (or,
on a branch, higher: a lab is not a licence server, but the hub cap always holds).
"""

from __future__ import annotations

from dataclasses import dataclass

HUB_CAP = 200


@dataclass(frozen=True)
class DeviceCategory:
    key: str
    models: str
    vpn_tunnels: int
    mesh_tunnels: int
    hub_side: bool = False


CATEGORIES: dict[str, DeviceCategory] = {c.key: c for c in (
    DeviceCategory("cpe-88x", "CPE R88x, R90x, 88x VoIP, 1640E, 1650E", 3, 6),
    DeviceCategory("cpe-179x", "CPE 179x, 18xx", 5, 10),
    DeviceCategory("cpe-179x-vpn25", "CPE 179x, 18xx with VPN 25", 25, 50),
    DeviceCategory("cpe-19xx", "CPE 19xx", 25, 50),
    DeviceCategory("cpe-19xx-vpn50", "CPE 19xx with VPN 50", 50, 100),
    DeviceCategory("cpe-19xx-vpn100", "CPE 19xx with VPN 100", 100, 200),
    DeviceCategory("isg-1000", "central site ISG-1000", 100, 200, hub_side=True),
    DeviceCategory("isg-4000", "central site ISG-4000", 200, 200, hub_side=True),
    DeviceCategory("isg-5000", "central site ISG-5000", 100, 200, hub_side=True),
    DeviceCategory("isg-8000", "central site ISG-8000", 250, 200, hub_side=True),
)}

# What a router is when the topology names no device: a mid-range branch router, a central gateway.
DEFAULT_DEVICE = {"branch": "cpe-19xx", "hub": "isg-1000", "gateway": "isg-1000"}


class LicenceError(ValueError):
    """Unknown device category; one-line message naming the valid ones."""


def category(key: str) -> DeviceCategory:
    try:
        return CATEGORIES[key]
    except KeyError:
        raise LicenceError(f"unknown mesh device {key!r} (known: {', '.join(CATEGORIES)})") from None


def mesh_limit(role: str, device: str | None = None, max_tunnels: int | None = None) -> int:
    """How many mesh tunnels this router may hold at once."""
    cat = category(device or DEFAULT_DEVICE.get(role, "cpe-19xx"))
    limit = max_tunnels if max_tunnels is not None else cat.mesh_tunnels
    if cat.hub_side or role in ("hub", "gateway"):
        limit = min(limit, HUB_CAP)
    return max(0, limit)
