"""Routing contexts in the topology: planning, overlaps across contexts, one-line errors."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from vpnlab.errors import TopologyError
from vpnlab.topology import load_topology
from vpnlab.topology.contexts import inner_endpoint, inner_transit

ROOT = Path(__file__).resolve().parents[3]

BASE = """\
name: t
secret: {psk: k}
nodes:
  hub:
    role: hub
    contexts:
      - {name: red, lan: 10.1.0.0/24, hosts: 1}
      - {name: blue, lan: 10.1.0.0/24}
  br1:
    role: branch
    contexts:
      - {name: red, lan: 10.1.1.0/24, hosts: 2}
      - {name: blue, hosts: [pc1]}
"""


def load(tmp_path: Path, text: str):
    p = tmp_path / "t.yml"
    p.write_text(textwrap.dedent(text))
    return load_topology(p)


def test_overlap_across_contexts_is_planned(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE)
    hub, br1 = lab.node("hub"), lab.node("br1")
    assert [(c.name, c.number, c.table) for c in hub.contexts] == [("red", 1, 101), ("blue", 2, 102)]
    assert [c.lans for c in hub.contexts] == [(IPv4Network("10.1.0.0/24"),)] * 2  # the same range twice
    assert [(i.name, str(i.address)) for i in hub.interfaces] == [
        ("wan0", "198.51.100.10/24"), ("c-red0", "10.1.0.1/24"), ("c-blue0", "10.1.0.1/24"),
    ]
    assert hub.lan_subnets == ()  # a router with contexts gets no planned plain LAN
    # blue at br1 is planned: the lowest 10.N.0.0/24 that overlaps nothing
    assert br1.contexts[1].lans == (IPv4Network("10.0.0.0/24"),)
    hosts = {n.name: n for n in lab.hosts}
    assert sorted(hosts) == ["br1-red1", "br1-red2", "hub-red1", "pc1"]
    assert hosts["pc1"].context == "blue" and hosts["pc1"].interfaces[0].address == IPv4Interface("10.0.0.10/24")
    assert hosts["br1-red2"].interfaces[0].segment == "ctx-br1-red"
    assert hosts["br1-red2"].gateway == IPv4Interface("10.1.1.1/24").ip
    assert {s.name for s in lab.segments} >= {"ctx-hub-red", "ctx-hub-blue", "ctx-br1-red", "ctx-br1-blue"}
    assert lab.context_method == "hsvpn" and lab.inner_block is None


def test_inner_block_for_tunnel_in_tunnel(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE.replace("nodes:", "context_method: tunnel-in-tunnel\nnodes:"))
    assert lab.inner_block == IPv4Network("100.127.0.0/16")
    assert str(inner_endpoint(lab.inner_block, 1)) == "100.127.0.2"
    assert str(inner_transit(lab.inner_block, 2, 0)) == "100.127.2.1/24"


def test_the_shipped_topology(tmp_path: Path) -> None:
    lab = load_topology(ROOT / "topologies" / "hsvpn.yml")
    assert len(lab.routers) == 4 and all(len(r.contexts) == 3 for r in lab.routers)
    # guest reuses corp's addresses at every site
    for r in lab.routers:
        by = {c.name: c.lans for c in r.contexts}
        assert by["guest"] == by["corp"]
    assert {h.context for h in lab.hosts} == {"corp", "voice", "guest"}


E = "  br1:\n    role: branch\n    contexts:\n"


@pytest.mark.parametrize(
    ("nodes", "where", "problem"),
    [
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 10.1.0.0/24}, {name: red}]\n",
         "nodes.hub.contexts", "context 'red' is defined twice"),
        ("  hub:\n    role: hub\n    contexts: [{name: Red}]\n",
         "nodes.hub.contexts.0.name", "bad context name 'Red': use 1-10 lowercase letters or digits, starting with a letter (it becomes part of interface names)"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 127.0.0.0/24}]\n",
         "nodes.hub.contexts.0.lan", "LAN 127.0.0.0/24 is in the loopback (127.0.0.0/8) range, which cannot be a LAN"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 224.1.0.0/24}]\n",
         "nodes.hub.contexts.0.lan", "LAN 224.1.0.0/24 is in the multicast (224.0.0.0/4) range, which cannot be a LAN"),
        ("  hub:\n    role: hub\n    lan: 169.254.0.0/24\n",
         "nodes.hub.lan", "LAN 169.254.0.0/24 is in the link-local (169.254.0.0/16) range, which cannot be a LAN"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 0.0.0.0/24}]\n",
         "nodes.hub.contexts.0.lan", "LAN 0.0.0.0/24 is in the 'this network' (0.0.0.0/8) range, which cannot be a LAN"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: [10.1.0.0/24, 10.1.0.128/25]}]\n",
         "nodes.hub.contexts.0.lan", "LAN 10.1.0.128/25 overlaps another LAN of this router 10.1.0.0/24 in the same context 'red'"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 10.1.0.0/24}]\n" + E + "      - {name: red, lan: 10.1.0.0/25}\n",
         "nodes.br1.contexts.0.lan", "LAN 10.1.0.0/25 overlaps hub's LAN 10.1.0.0/24 in the same context 'red'"),
        ("  hub:\n    role: hub\n    contexts: [{name: red}]\n" + E + "      - {name: blue}\n",
         "nodes.br1.contexts.0.name", "hub 'hub' has no context 'blue' to carry it (its contexts: red)"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 198.51.100.0/25}]\n",
         "nodes.hub.contexts.0.lan", "LAN 198.51.100.0/25 overlaps the underlay (internet: 198.51.100.0/24)"),
        ("  hub:\n    role: hub\n    implementation: strongswan\n    contexts: [{name: red}]\n",
         "nodes.hub", "routing contexts need implementation: agent (a strongswan node carries only plain LANs)"),
        ("  hub:\n    role: hub\n    dataplane: xfrm\n    contexts: [{name: red}]\n",
         "nodes.hub.dataplane", "context_method hsvpn needs the userspace engine (the kernel's XFRM builds the ESP trailer itself, so it cannot carry the context tag): use dataplane auto or userspace"),
        ("  hub:\n    role: hub\n    lan: 10.9.0.0/24\n    contexts: [{name: red}]\n",
         "nodes.hub.lan", "with context_method hsvpn a router with contexts carries only contexts: put this LAN into a context (or use per-network or tunnel-in-tunnel)"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, hosts: 1}]\n    hosts: 1\n",
         "nodes.hub.hosts", "hub has no plain LAN for hosts; give 'lan' or put the hosts in a context"),
        ("  averylongname:\n    role: hub\n    contexts: [{name: red, hosts: 1}]\n",
         "nodes.averylongname.contexts.0.hosts", "host name 'averylongname-red1' would be longer than 15 characters; list the host names instead"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, lan: 10.1.0.0/29, hosts: 3}]\n",
         "nodes.hub.contexts.0.hosts", "LAN 10.1.0.0/29 is too small for 3 hosts (host addresses start at .10)"),
        ("  hub:\n    role: hub\n    contexts: [{name: red, hosts: [hub]}]\n",
         "nodes.hub.contexts.0.hosts", "host name 'hub' is already used by another node"),
    ],
)
def test_context_errors_are_one_line(tmp_path: Path, nodes: str, where: str, problem: str) -> None:
    with pytest.raises(TopologyError) as info:
        load(tmp_path, "name: t\nsecret: {psk: k}\nnodes:\n" + nodes)
    assert str(info.value) == f"{tmp_path / 't.yml'}: {where}: {problem}"
    assert "\n" not in str(info.value)


def test_per_network_on_xfrm_loads(tmp_path: Path) -> None:
    """The kernel XFRM engine carries per-network contexts (a VRF and a mark per context; tested in
    user-mode Linux, tests/root/test_xfrm_contexts_uml.py): `dataplane: xfrm` is no longer refused."""
    lab = load(tmp_path, "name: t\nsecret: {psk: k}\ncontext_method: per-network\nnodes:\n"
                         "  hub:\n    role: hub\n    dataplane: xfrm\n    contexts: [{name: red}]\n")
    assert lab.node("hub").dataplane == "xfrm" and [c.name for c in lab.node("hub").contexts] == ["red"]


def test_bad_method_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TopologyError) as info:
        load(tmp_path, BASE.replace("nodes:", "context_method: gre\nnodes:"))
    assert str(info.value) == (
        f"{tmp_path / 't.yml'}: context_method: 'gre' is not valid (expected 'hsvpn', 'tunnel-in-tunnel' or 'per-network')"
    )
