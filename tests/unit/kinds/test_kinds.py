"""Kinds turn resolved nodes into ContainerSpecs; the registry refuses unknown kinds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from vpnlab.errors import LabError
from vpnlab.kinds.registry import kind_for, kind_names
from vpnlab.topology import load_topology
from vpnlab_agent.config import CONFIG_PATH, NodeConfig

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"


def test_registered_kinds() -> None:
    assert kind_names() == ("agent", "host", "libreswan", "nat", "strongswan")


def test_agent_router_spec() -> None:
    lab = load_topology(TOPOLOGIES / "minimal.yml")
    hub = lab.node("hub")
    kind = kind_for(hub)
    assert kind.name == "agent"
    spec = kind.container_spec(lab, hub)
    assert spec.node == "hub"
    assert spec.command == ("python3", "-m", "vpnlab_agent", "run")
    assert spec.has_agent
    assert spec.sysctls == {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
        "net.ipv4.conf.all.accept_redirects": "0",
        "net.ipv4.conf.default.accept_redirects": "0",
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
    }
    assert "/dev/net/tun" in spec.devices and "NET_ADMIN" in spec.cap_add
    config = NodeConfig.from_json(spec.files[CONFIG_PATH].decode())
    assert (config.name, config.role, config.implementation) == ("hub", "hub", "agent")


def test_strongswan_spec_is_the_agent_container_in_strongswan_mode() -> None:
    lab = load_topology(TOPOLOGIES / "strongswan-branch.yml")
    br1 = lab.node("br1")
    kind = kind_for(br1)
    assert kind.name == "strongswan"
    spec = kind.container_spec(lab, br1)
    assert spec.command == ("python3", "-m", "vpnlab_agent", "run") and spec.has_agent
    assert NodeConfig.from_json(spec.files[CONFIG_PATH].decode()).implementation == "strongswan"


def test_host_spec() -> None:
    lab = load_topology(TOPOLOGIES / "minimal.yml")
    host = lab.node("br1-h1")
    kind = kind_for(host)
    assert kind.name == "host"
    spec = kind.container_spec(lab, host)
    assert spec.command == ("sleep", "infinity")
    assert not spec.has_agent and spec.devices == () and spec.files == {}
    assert "NET_ADMIN" in spec.cap_add
    assert spec.sysctls == {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}


def test_unknown_kind_lists_valid_ones() -> None:
    lab = load_topology(TOPOLOGIES / "minimal.yml")
    odd = dataclasses.replace(lab.node("hub"), implementation="vyos")  # type: ignore[arg-type]
    with pytest.raises(LabError, match=r"^node hub: unknown kind 'vyos' \(valid kinds: agent, host, libreswan, nat, strongswan\)$"):
        kind_for(odd)


def test_every_node_of_every_topology_has_a_spec() -> None:
    for path in sorted(TOPOLOGIES.glob("*.yml")):
        lab = load_topology(path)
        specs = [kind_for(n).container_spec(lab, n) for n in lab.nodes]
        assert [s.node for s in specs] == [n.name for n in lab.nodes]
