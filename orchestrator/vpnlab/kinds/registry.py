"""Registry of node kinds, keyed by Node.implementation ("agent", "strongswan", "libreswan", "host", "nat").

Adding a kind is one module with a class that has `name` and `container_spec`, plus one line here.
"""

from __future__ import annotations

from vpnlab.errors import LabError
from vpnlab.kinds.base import Kind
from vpnlab.kinds.host import HostKind
from vpnlab.kinds.libreswan import LibreswanKind
from vpnlab.kinds.nat import NatKind
from vpnlab.kinds.router import AgentRouterKind
from vpnlab.kinds.strongswan import StrongswanKind
from vpnlab.topology.model import Node

_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> None:
    if kind.name in _KINDS:
        raise ValueError(f"kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind


def kind_names() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


def kind_for(node: Node) -> Kind:
    try:
        return _KINDS[node.implementation]
    except KeyError:
        raise LabError(
            f"node {node.name}: unknown kind {node.implementation!r} (valid kinds: {', '.join(kind_names())})"
        ) from None


register(AgentRouterKind())
register(StrongswanKind())
register(LibreswanKind())
register(HostKind())
register(NatKind())
