"""netconfig.plan(): node config -> links, addresses, routes; bad configs refused with one line."""

from __future__ import annotations

import dataclasses

import pytest

from vpnlab_agent.config import InterfaceConfig, NodeConfig, PeerConfig, RouteConfig
from vpnlab_agent.netconfig import GUARD_METRIC, NetConfigError, PlannedAddress, PlannedRoute, plan


def test_plan_of_a_branch(branch: NodeConfig) -> None:
    p = plan(branch)
    assert p.links == ("lo", "wan0", "lan0")
    assert p.required_links == ("wan0", "lan0")
    assert p.addresses == (
        PlannedAddress("wan0", "198.51.100.11", 24, 4),
        PlannedAddress("lan0", "10.1.0.1", 24, 4),
    )
    assert p.routes == (
        PlannedRoute("0.0.0.0", 0, "198.51.100.1", None, 4),
        # the leak guard for the hub's selectors: refused here while the tunnel is down
        PlannedRoute("10.0.0.0", 8, None, None, 4, type="unreachable", metric=GUARD_METRIC),
    )
    assert p.routes[0].cidr == "0.0.0.0/0"


def test_plan_keeps_device_routes_and_ipv6(branch: NodeConfig) -> None:
    cfg = dataclasses.replace(
        branch,
        interfaces=branch.interfaces + (InterfaceConfig("lan1", "lan", ("2001:db8:1::1/64",)),),
        routes=(RouteConfig("10.9.0.0/16", dev="lan0"), RouteConfig("2001:db8:9::/48", via="2001:db8:1::2")),
    )
    p = plan(cfg)
    assert PlannedAddress("lan1", "2001:db8:1::1", 64, 6) in p.addresses
    assert p.routes[:2] == (
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


def _guards(cfg: NodeConfig) -> list[str]:
    return [r.cidr for r in plan(cfg).routes if r.type == "unreachable"]


def test_leak_guards_for_every_remote_selector_once(hub: NodeConfig) -> None:
    assert _guards(hub) == ["10.1.0.0/24", "10.2.0.0/24", "10.22.0.0/16"]
    assert all(r.metric == GUARD_METRIC for r in plan(hub).routes if r.type == "unreachable")
    assert _guards(dataclasses.replace(hub, ike=None)) == []


def _branch_selecting(branch: NodeConfig, *remote_ts: str, address: str | None = "198.51.100.10") -> NodeConfig:
    assert branch.ike is not None
    peer = PeerConfig("hub", "hub", address, address is not None, ("10.1.0.0/24",), remote_ts)
    return dataclasses.replace(branch, ike=dataclasses.replace(branch.ike, peers=(peer,)))


def test_no_guard_that_would_cut_off_the_underlay(branch: NodeConfig) -> None:
    # a full tunnel, a selector holding the peer, one overlapping our WAN, one holding our gateway
    assert _guards(_branch_selecting(branch, "0.0.0.0/0")) == []
    assert _guards(_branch_selecting(branch, "198.51.100.0/25")) == []
    assert _guards(_branch_selecting(branch, "198.51.100.128/25", address=None)) == []
    cfg = dataclasses.replace(_branch_selecting(branch, "192.0.2.0/24", "10.0.0.0/24"),
                              routes=(RouteConfig("203.0.113.0/24", via="192.0.2.1"),))
    assert _guards(cfg) == ["10.0.0.0/24"]


def test_bad_remote_selector_is_one_line(branch: NodeConfig) -> None:
    with pytest.raises(NetConfigError, match="peer hub: remote_ts '10.0.0/40' is not a CIDR"):
        plan(_branch_selecting(branch, "10.0.0/40"))
