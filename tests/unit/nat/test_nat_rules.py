"""The NAT device's nftables script and conntrack parsing (vpnlab_agent/nat/rules.py)."""

from __future__ import annotations

import pytest

from vpnlab_agent.nat.rules import NatConfigError, NatSpec, parse_conntrack, render


def ext(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "endpoint-independent", "mapping_timeout_s": 30, "inside": "100.64.0.0/24",
        "inside_if": "lan0", "outside_if": "wan0", "public": "198.51.100.11",
        "branches": [{"name": "br1", "address": "100.64.0.10"}, {"name": "br2", "address": "100.64.0.11"}],
    }
    base.update(over)
    return base


def test_endpoint_independent_preserves_ports_and_pins_the_later_branches_ike_ports() -> None:
    script = render(NatSpec.from_extension(ext()))
    assert 'oifname "wan0" ip saddr 100.64.0.0/24 masquerade\n' in script
    assert "fully-random" not in script
    # the first branch keeps 500/4500; the second gets fixed public ports towards every peer
    assert "ip saddr 100.64.0.10 udp" not in script
    assert 'ip saddr 100.64.0.11 udp sport 4500 snat to 198.51.100.11:4501' in script
    assert 'ip saddr 100.64.0.11 udp sport 500 snat to 198.51.100.11:501' in script


def test_symmetric_picks_random_ports_and_no_fixed_ones() -> None:
    script = render(NatSpec.from_extension(ext(type="symmetric")))
    assert "masquerade fully-random" in script and "snat to" not in script


def test_the_mapping_timeout_and_inbound_filtering_are_in_one_replaceable_table() -> None:
    script = render(NatSpec.from_extension(ext(mapping_timeout_s=7)))
    assert "policy = { unreplied: 7, replied: 7 }" in script
    assert 'iifname "lan0" meta l4proto udp ct timeout set "mapping"' in script
    assert "type filter hook prerouting priority filter" in script  # after conntrack, before confirm
    assert "policy drop" in script and "ct state established,related accept" in script
    assert script.startswith("table ip vpnlab_nat\ndelete table ip vpnlab_nat\n")


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"type": "full-cone"}, "extensions.nat.type"),
        ({"mapping_timeout_s": 0}, "must be positive"),
        ({"inside": "100.64.0.1/24"}, "extensions.nat"),
        ({"inside_if": 'lan0"; flush ruleset; "'}, "bad interface name"),
        ({"public": "nope"}, "extensions.nat"),
    ],
)
def test_bad_extensions_are_one_line(over: dict[str, object], fragment: str) -> None:
    with pytest.raises(NatConfigError, match=fragment):
        NatSpec.from_extension(ext(**over))


def test_a_config_without_the_extension_is_refused() -> None:
    with pytest.raises(NatConfigError, match="not a NAT device"):
        NatSpec.from_extension(None)


def test_conntrack_lines_become_mappings() -> None:
    text = (
        "udp      17 27 src=100.64.0.10 dst=198.51.100.10 sport=4500 dport=4500 src=198.51.100.10 "
        "dst=198.51.100.11 sport=4500 dport=56670 [ASSURED] mark=0 use=1\n"
        "tcp      6 431999 ESTABLISHED src=1.2.3.4 dst=5.6.7.8 sport=1 dport=2 src=5.6.7.8 dst=1.2.3.4 sport=2 dport=1\n"
        "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
    )
    assert parse_conntrack(text) == [{
        "inside": "100.64.0.10:4500", "public": "198.51.100.11:56670", "remote": "198.51.100.10:4500",
        "timeout_s": 27, "assured": True,
    }]
