"""netconfig.plan(): node config -> links, addresses, routes; bad configs refused with one line."""

from __future__ import annotations

import dataclasses

import pytest

from vpnlab_agent.config import InterfaceConfig, NodeConfig, RouteConfig
from vpnlab_agent.netconfig import NetConfigError, PlannedAddress, PlannedRoute, plan


def test_plan_of_a_branch(branch: NodeConfig) -> None:
    p = plan(branch)
    assert p.links == ("lo", "wan0", "lan0")
    assert p.required_links == ("wan0", "lan0")
    assert p.addresses == (
        PlannedAddress("wan0", "198.51.100.11", 24, 4),
        PlannedAddress("lan0", "10.1.0.1", 24, 4),
    )
    assert p.routes == (PlannedRoute("0.0.0.0", 0, "198.51.100.1", None, 4),)
    assert p.routes[0].cidr == "0.0.0.0/0"


def test_plan_keeps_device_routes_and_ipv6(branch: NodeConfig) -> None:
    cfg = dataclasses.replace(
        branch,
        interfaces=branch.interfaces + (InterfaceConfig("lan1", "lan", ("2001:db8:1::1/64",)),),
        routes=(RouteConfig("10.9.0.0/16", dev="lan0"), RouteConfig("2001:db8:9::/48", via="2001:db8:1::2")),
    )
    p = plan(cfg)
    assert PlannedAddress("lan1", "2001:db8:1::1", 64, 6) in p.addresses
    assert p.routes == (
        PlannedRoute("10.9.0.0", 16, None, "lan0", 4),
        PlannedRoute("2001:db8:9::", 48, "2001:db8:1::2", None, 6),
    )


def _with(cfg: NodeConfig, **changes: object) -> NodeConfig:
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"interfaces": (InterfaceConfig("wan0", "wan", ("198.51.100.11",)),)}, "needs a prefix length"),
        ({"interfaces": (InterfaceConfig("wan0", "wan", ("198.51.100.300/24",)),)}, "not an address/prefix"),
        ({"interfaces": (InterfaceConfig("a-very-long-interface-name", "wan", ()),)}, "not a valid Linux interface name"),
        ({"interfaces": (InterfaceConfig("wan0", "wan", ()), InterfaceConfig("wan0", "lan", ()))}, "listed twice"),
        ({"routes": (RouteConfig("10.0.0.1/8", via="198.51.100.1"),)}, "not a network in CIDR notation"),
        ({"routes": (RouteConfig("10.0.0.0/8"),)}, "needs a gateway"),
        ({"routes": (RouteConfig("10.0.0.0/8", dev="eth9"),)}, "device eth9 is not one of"),
        ({"routes": (RouteConfig("10.0.0.0/8", via="2001:db8::1"),)}, "another address family"),
        ({"routes": (RouteConfig("10.0.0.0/8", via="gateway"),)}, "is not an address"),
    ],
)
def test_bad_configs_are_refused_with_one_line(branch: NodeConfig, change: dict, message: str) -> None:
    with pytest.raises(NetConfigError, match=message) as info:
        plan(_with(branch, **change))
    assert "\n" not in str(info.value)
