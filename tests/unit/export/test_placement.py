"""Placement of nodes on hosts for a multi-host export: the file and --host, each mistake one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpnlab.errors import TopologyError
from vpnlab.export.placement import load_placement, parse_hosts, place
from vpnlab.topology import load_topology

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def lab():  # type: ignore[no-untyped-def]
    return load_topology(REPO / "topologies" / "bench-20.yml")


def test_the_automatic_split_is_total_balanced_and_keeps_lans_together(lab) -> None:  # type: ignore[no-untyped-def]
    p = place(lab, parse_hosts(["a=192.0.2.1", "b=192.0.2.2", "c=192.0.2.3"]))
    assert set(p.node_host) == {n.name for n in lab.nodes} and set(p.node_host.values()) == {"a", "b", "c"}
    sizes = sorted(len(p.nodes_on(h)) for h in "abc")
    assert sum(sizes) == len(lab.nodes) and sizes[-1] - sizes[0] <= 2
    assert all(p.node_host[h.name] == p.node_host[h.router] for h in lab.hosts)
    assert p == place(lab, parse_hosts(["a=192.0.2.1", "b=192.0.2.2", "c=192.0.2.3"]))  # deterministic


def test_a_placement_file_pins_nodes_and_splits_the_rest(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "placement.yml"
    f.write_text("hosts: {a: 192.0.2.1, b: 192.0.2.2}\nmtu: 9000\nnodes: {hub: b, br1: b}\n")
    p = load_placement(f, lab)
    assert p.node_host["hub"] == p.node_host["br1"] == p.node_host["br1-h1"] == "b" and p.host_mtu == 9000
    assert len(p.nodes_on("a")) > len(p.nodes_on("b")) - 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hosts: {a: 192.0.2.1}\nnodes: {hub9: a}\n", "nodes.hub9: no node hub9 in lab bench20"),
        ("hosts: {a: 192.0.2.1}\nnodes: {hub: z}\n", "nodes.hub: unknown host 'z' (hosts: a)"),
        ("hosts: {a: 192.0.2.999}\n", "hosts.a: '192.0.2.999' is not an IP address"),
        ("hosts: {a: 192.0.2.1, b: 192.0.2.1}\n", "hosts.b: address 192.0.2.1 is already host a's"),
        ("hosts: {a: 192.0.2.1, b: '2001:db8::1'}\n", "hosts.b: every host needs an IPv4 address"),
        ("hosts: {'a b': 192.0.2.1}\n", "hosts.a b: a host name is"),
        ("hosts: {}\n", "hosts:"),
        ("hosts: {a: 192.0.2.1}\nmtu: 100\n", "mtu:"),
        ("hosts: {a: 192.0.2.1}\nplaces: {}\n", "places:"),
    ],
)
def test_placement_file_mistakes_are_one_line_naming_file_and_field(lab, tmp_path: Path, text: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "p.yml"
    f.write_text(text)
    with pytest.raises(TopologyError) as err:
        load_placement(f, lab)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{f}: ") and expected in message, message


def test_host_options_need_name_equals_address() -> None:
    with pytest.raises(TopologyError, match="--host: a: expected NAME=ADDRESS"):
        parse_hosts(["a"])
