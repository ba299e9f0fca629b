"""Node configs for the agent's unit tests: a hub (responder) and a branch (initiator)."""

from __future__ import annotations

import pytest

from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig, RouteConfig


def make_hub(implementation: str = "strongswan", **ike: object) -> NodeConfig:
    return NodeConfig(
        lab="t", name="hub", role="hub", implementation=implementation,  # type: ignore[arg-type]
        public_address="198.51.100.10",
        interfaces=(
            InterfaceConfig("wan0", "wan", ("198.51.100.10/24",)),
            InterfaceConfig("lan0", "lan", ("10.0.0.1/24",)),
        ),
        routes=(RouteConfig("192.0.2.0/24", via="198.51.100.1"),),
        lan_subnets=("10.0.0.0/24",),
        ike=IkeConfig(
            local_id="hub", psk='pa"ss\\word', peers=(
                PeerConfig("br1", "br1", None, False, ("10.0.0.0/24",), ("10.1.0.0/24",)),
                PeerConfig("br2", "br2", None, False, ("10.0.0.0/24",), ("10.2.0.0/24", "10.22.0.0/16")),
            ),
            **ike,  # type: ignore[arg-type]
        ),
    )


def make_branch(implementation: str = "strongswan", **ike: object) -> NodeConfig:
    return NodeConfig(
        lab="t", name="br1", role="branch", implementation=implementation,  # type: ignore[arg-type]
        public_address="198.51.100.11",
        interfaces=(
            InterfaceConfig("wan0", "wan", ("198.51.100.11/24",)),
            InterfaceConfig("lan0", "lan", ("10.1.0.1/24",)),
        ),
        routes=(RouteConfig("0.0.0.0/0", via="198.51.100.1"),),
        lan_subnets=("10.1.0.0/24",),
        ike=IkeConfig(
            local_id="br1", psk='pa"ss\\word', ike_lifetime_s=7200, child_lifetime_s=1800, dpd_interval_s=15,
            peers=(PeerConfig("hub", "hub", "198.51.100.10", True, ("10.1.0.0/24",), ("10.0.0.0/8",)),),
            **ike,  # type: ignore[arg-type]
        ),
    )


@pytest.fixture
def hub() -> NodeConfig:
    return make_hub()


@pytest.fixture
def branch() -> NodeConfig:
    return make_branch()
