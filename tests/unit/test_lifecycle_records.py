"""What lifecycle verbs and link faults rely on without Docker: the wiring recorded on each
container, fixed MACs, and the one-line refusals of bad link settings."""

from __future__ import annotations

import pytest

from vpnlab.errors import LabError
from vpnlab.linkfault import _loss_percent, _rate_bits, _usecs
from vpnlab.net.portrecords import port_records, ports_label
from vpnlab.net.wiring import interface_mac, plan_fabric
from vpnlab.topology import load_topology


def test_each_container_records_how_to_wire_it_again() -> None:
    lab = load_topology("topologies/minimal.yml")
    plan = plan_fabric(lab)
    router = port_records({"vpnlab.ports": ports_label(lab, plan, "br1", configure_from_outside=False)})
    host = port_records({"vpnlab.ports": ports_label(lab, plan, "br1-h1", configure_from_outside=True)})
    assert [(r.ifname, r.bridge, r.alias, r.address) for r in router] == [
        ("wan0", "inet", "br1:wan0", None), ("lan0", "l1", "br1:lan0", None)]
    assert [(r.ifname, r.address, r.gateway) for r in host] == [("eth0", "10.1.0.10/24", "10.1.0.1")]
    assert [r.port for r in router] == [p.port for p in plan.ports_of("br1")]


def test_no_label_is_no_records_and_a_broken_one_is_one_line() -> None:
    assert port_records({}) == []
    with pytest.raises(LabError, match="unreadable"):
        port_records({"vpnlab.ports": "[[1]"})


def test_macs_are_fixed_per_lab_interface_and_locally_administered() -> None:
    mac = interface_mac("lab", "br1:wan0")
    assert mac == interface_mac("lab", "br1:wan0")
    assert mac != interface_mac("lab", "br1:lan0") != interface_mac("other", "br1:wan0")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast


def test_link_settings_parse_and_bad_ones_name_the_value() -> None:
    assert _rate_bits("10mbit") == 10_000_000 and _rate_bits("1.5Gbit") == 1_500_000_000
    assert _usecs("20ms") == 20_000 and _loss_percent("0.5%") == 0.5
    for bad, call in (("fast", _rate_bits), ("10", _rate_bits), ("1kbit", _rate_bits), ("20", _usecs), ("101%", _loss_percent)):
        with pytest.raises(LabError, match=repr(bad)):
            call(bad)
