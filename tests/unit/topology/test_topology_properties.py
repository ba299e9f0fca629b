"""Planning invariants over generated labs: unique addresses per segment, hosts inside their LAN,
no overlapping LANs, same file -> same Lab."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnlab.topology import load_topology


@st.composite
def topologies(draw: st.DrawFn) -> dict:
    n_hubs = draw(st.integers(1, 3))
    n_branches = draw(st.integers(0, 12))
    nodes: dict[str, dict] = {}
    hubs = [f"hub{i}" for i in range(n_hubs)]
    explicit_lans = iter(draw(st.permutations([f"10.{n}.0.0/24" for n in range(0, 40, 3)])))
    explicit_pubs = iter(draw(st.permutations(range(10, 60, 2))))
    names = hubs + [f"br{i}" for i in range(n_branches)]
    order = draw(st.permutations(names))
    for name in order:
        node: dict = {"role": "hub" if name.startswith("hub") else "branch"}
        if node["role"] == "branch":
            node["hubs"] = draw(st.lists(st.sampled_from(hubs), min_size=1, max_size=n_hubs, unique=True))
        if draw(st.booleans()):
            node["lan"] = next(explicit_lans)
        if draw(st.booleans()):
            node["public"] = f"198.51.100.{next(explicit_pubs)}"
        node["hosts"] = draw(st.integers(0, 3))
        nodes[name] = node
    for i in range(draw(st.integers(0, 3))):
        router = draw(st.sampled_from(names))
        nodes[f"pc{i}"] = {"role": "host", "router": router}
    return {"name": "prop", "secret": {"psk": "k"}, "nodes": nodes}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=topologies())
def test_planning_invariants(data: dict, tmp_path: Path) -> None:
    path = tmp_path / "gen.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    lab = load_topology(path)
    assert lab == load_topology(path)

    segments = {s.name: s for s in lab.segments}
    lans = [s.subnet for s in lab.segments if s.kind == "lan"]
    for i, a in enumerate(lans):
        assert not a.overlaps(lab.underlay)
        assert all(not a.overlaps(b) for b in lans[i + 1 :])

    seen: set[tuple[str, IPv4Address]] = set()
    for node in lab.nodes:
        for iface in node.interfaces:
            seg = segments[iface.segment]
            assert iface.address.network == seg.subnet
            assert iface.address.ip not in (seg.subnet.network_address, seg.subnet.broadcast_address)
            key = (iface.segment, iface.address.ip)
            assert key not in seen, key
            seen.add(key)

    for node, spec in data["nodes"].items():
        planned = lab.node(node)
        if spec["role"] != "host":
            if "public" in spec:
                assert str(planned.public_address) == spec["public"]
            if "lan" in spec:
                assert [str(n) for n in planned.lan_subnets] == [spec["lan"]]
            if "hosts" in spec:
                assert len([h for h in lab.hosts if h.router == node]) >= spec["hosts"]
    for host in lab.hosts:
        router = lab.node(host.router or "")
        assert host.gateway in {i.address.ip for i in router.interfaces}
