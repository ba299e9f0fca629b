"""keepalived.conf rendered for a cluster member, and keepalived's notify-FIFO lines parsed."""

from __future__ import annotations

import dataclasses
import re

import pytest

from vpnlab_agent.cluster.keepalived import KeepalivedError, VrrpInstance, advert_text, parse_notify, render


def section(text: str, name: str) -> str:
    start = re.search(rf"(?m)^\s*{re.escape(name)} {{\n", text)
    assert start, f"no section {name!r} in:\n{text}"
    depth, i = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start.end():i - 1]


def test_unicast_instance() -> None:
    text = render("gw1", [VrrpInstance(
        name="vpn_vip", interface="wan0", virtual_router_id=51, priority=150,
        virtual_addresses=("198.51.100.100/24",), unicast_src="198.51.100.21",
        unicast_peers=("198.51.100.22", "198.51.100.23"), version=2,
    )])
    g = section(text, "global_defs")
    assert "router_id gw1" in g and "vrrp_version 2" in g and "notify_fifo" not in g
    inst = section(text, "vrrp_instance vpn_vip")
    lines = [line.strip() for line in inst.splitlines() if line.strip()]
    for expected in ("state BACKUP", "interface wan0", "virtual_router_id 51", "priority 150",
                     "advert_int 1", "unicast_src_ip 198.51.100.21"):
        assert expected in lines, (expected, lines)
    assert "nopreempt" not in lines
    assert [p.strip() for p in section(inst, "unicast_peer").split()] == ["198.51.100.22", "198.51.100.23"]
    assert section(inst, "virtual_ipaddress").strip() == "198.51.100.100/24 dev wan0"


def test_vrrpv3_subsecond_multicast_with_notify_fifo() -> None:
    text = render("gw2", [VrrpInstance("v1", "lan0", 7, 200, ("10.0.0.254/24",), state="MASTER",
                                       nopreempt=True, advert_int=0.1)], notify_fifo="/run/vpnlab/vrrp.fifo")
    g = section(text, "global_defs")
    assert "vrrp_version 3" in g and "notify_fifo /run/vpnlab/vrrp.fifo" in g and "vrrp_priority" not in g
    g2 = section(render("gw2", [VrrpInstance("v1", "lan0", 7, 200, ("10.0.0.254/24",))], nice=-15), "global_defs")
    assert "vrrp_priority -15" in g2
    inst = section(text, "vrrp_instance v1")
    assert "unicast_peer" not in inst and "unicast_src_ip" not in inst
    assert "state MASTER" in inst and "nopreempt" in inst and "advert_int 0.1\n" in inst


@pytest.mark.parametrize("seconds,text", [(1.0, "1"), (0.1, "0.1"), (0.25, "0.25"), (2, "2")])
def test_advert_text(seconds: float, text: str) -> None:
    assert advert_text(seconds) == text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"virtual_router_id": 0}, "virtual_router_id must be 1..255"),
        ({"priority": 255}, "priority must be 1..254"),
        ({"state": "PRIMARY"}, "MASTER or BACKUP"),
        ({"virtual_addresses": ()}, "needs a virtual address"),
        ({"virtual_addresses": ("198.51.100.300/24",)}, "is not an address"),
        ({"unicast_peers": ("198.51.100.22",)}, "need unicast_src"),
        ({"name": "bad name"}, "bad name"),
        ({"advert_int": 0.001}, "advert_int must be 0.01..40.95"),
        ({"advert_int": 0.5, "version": 2}, "advert_int must be 1..40 whole"),
        ({"version": 4}, "version must be 2 or 3"),
    ],
)
def test_bad_instances(changes: dict, message: str) -> None:
    base = VrrpInstance("v1", "wan0", 51, 100, ("198.51.100.100/24",))
    with pytest.raises(KeepalivedError, match=message):
        render("gw1", [dataclasses.replace(base, **changes)])


def test_parse_notify_lines() -> None:
    n = parse_notify('INSTANCE "lb" MASTER 150\n')
    assert n is not None and (n.kind, n.name, n.state, n.priority) == ("INSTANCE", "lb", "MASTER", 150)
    assert parse_notify('INSTANCE "lb" FAULT 0').state == "FAULT"  # type: ignore[union-attr]
    for junk in ("", "garbage", 'INSTANCE lb MASTER 1', 'INSTANCE "lb" PRIMARY 1'):
        assert parse_notify(junk) is None
