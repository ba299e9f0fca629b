"""`vpnlab export`: every ready topology becomes containerlab files that validate against containerlab's
own JSON Schema, and reading the files back (as containerlab would: nodes, binds, exec, links, VXLAN
pairs) gives the lab again: every node, interface, address and segment. No containerlab binary runs here."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from vpnlab.errors import ExportError
from vpnlab.export import containerlab as clab
from vpnlab.export.placement import parse_hosts, place
from vpnlab.kinds.registry import kind_for
from vpnlab.nodeconfig import build_node_config
from vpnlab.runtime.base import node_labels
from vpnlab.topology import load_topology
from vpnlab.topology.model import Lab
from vpnlab_agent.config import NodeConfig

REPO = Path(__file__).resolve().parents[3]
TOPOLOGIES = sorted((REPO / "topologies").glob("*.yml"))
IMAGE = "vpnlab-node:test"
SCHEMA_ENV = "VPNLAB_CLAB_SCHEMA"


def _schema_path() -> Path | None:
    """containerlab's schema is data beside the project (../shared/containerlab, see its README),
    not a copy inside it: $VPNLAB_CLAB_SCHEMA, else shared/containerlab/ in the repo's parent or above."""
    if os.environ.get(SCHEMA_ENV):
        return Path(os.environ[SCHEMA_ENV])
    for parent in REPO.parents:
        candidate = parent / "shared" / "containerlab" / "clab.schema.json"
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras: make venv")
    regex = pytest.importorskip("regex", reason="regex is in the test extras: make venv")
    path = _schema_path()
    if path is None:
        pytest.skip(f"containerlab's clab.schema.json not found in ../shared/containerlab (or set {SCHEMA_ENV})")
    schema = json.loads(path.read_text())

    def pattern(validator: Any, patrn: str, instance: Any, _schema: Any) -> Any:
        # containerlab's patterns are Go regexps: `ipv4-addr` allows a zone as [\\p{N}\\p{L}]+, which
        # Python's `re` cannot compile; the `regex` package reads them as Go does.
        if validator.is_type(instance, "string") and not regex.search(patrn, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {patrn!r}")

    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema, format_checker=None)
    return jsonschema.validators.extend(base, {"pattern": pattern})(schema)


# ------------------------------------------------------------------ reading an export back


@dataclass
class ReadBack:
    """What the exported files say, with no knowledge of how the exporter built them."""

    node_file: dict[str, Path] = field(default_factory=dict)  # lab node -> the topology file holding it
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    configs: dict[str, NodeConfig] = field(default_factory=dict)  # routers: the bound node.json
    addresses: dict[tuple[str, str], str] = field(default_factory=dict)  # (node, interface) -> CIDR
    routes: dict[str, str] = field(default_factory=dict)  # end host -> default gateway
    segments: list[frozenset[tuple[str, str]]] = field(default_factory=list)  # (node, interface) sets
    vxlan: dict[int, list[tuple[Path, str, dict[str, Any]]]] = field(default_factory=dict)  # vni -> (file, bridge key, link)
    file_address: dict[Path, str] = field(default_factory=dict)
    link_mtu: dict[tuple[str, str], int] = field(default_factory=dict)  # (node, interface) -> MTU


def read_back(outdir: Path, validator: Any) -> ReadBack:
    rb = ReadBack()
    parent: dict[tuple[Path, str], tuple[Path, str]] = {}  # union-find over (file, bridge node)

    def find(k: tuple[Path, str]) -> tuple[Path, str]:
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    members: dict[tuple[Path, str], set[tuple[str, str]]] = {}
    files = sorted(outdir.rglob("*.clab.yml"))
    assert files, f"no topology file in {outdir}"
    for f in files:
        doc = yaml.safe_load(f.read_text())
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        assert not errors, f"{f}: {errors[0].message} at {list(errors[0].path)}"
        nodes = doc["topology"]["nodes"]
        for name, node in nodes.items():
            if node["kind"] != "linux" or "vpnlab.node" not in (node.get("labels") or {}):
                continue
            assert name not in rb.node_file, f"node {name} in {rb.node_file[name]} and in {f}"
            rb.node_file[name], rb.nodes[name] = f, node
            for bind in node.get("binds", []):
                src, dst, *_ = bind.split(":")
                if dst == "/etc/vpnlab/node.json":
                    rb.configs[name] = NodeConfig.from_json((f.parent / src).read_text())
            for command in node.get("exec", []):
                words = shlex.split(command)
                if words[:3] == ["ip", "address", "add"]:
                    rb.addresses[(name, words[words.index("dev") + 1])] = words[3]
                if words[:4] == ["ip", "route", "add", "default"]:
                    rb.routes[name] = words[words.index("via") + 1]
        for name, cfg in rb.configs.items():
            for iface in cfg.interfaces:
                rb.addresses[(name, iface.name)] = iface.addresses[0]
        for link in doc["topology"].get("links", []):
            if "type" not in link:  # brief form: "node:interface" twice, a veth
                ends = [tuple(e.rsplit(":", 1)) for e in link["endpoints"]]
                bridge = [e for e in ends if nodes[e[0]]["kind"] == "bridge"]
                box = [e for e in ends if nodes[e[0]]["kind"] != "bridge"]
                assert len(bridge) == 1 and len(box) == 1, f"{f}: a veth joins one node to one bridge: {ends}"
                members.setdefault(find((f, bridge[0][0])), set()).add(box[0])
                rb.link_mtu[box[0]] = link["mtu"]
            elif link.get("type") == "vxlan":
                key = (f, link["endpoint"]["node"])
                assert nodes[key[1]]["kind"] == "bridge"
                find(key)
                rb.vxlan.setdefault(link["vni"], []).append((f, key[1], link))
            else:
                raise AssertionError(f"{f}: unexpected link {link}")
    for vni, ends in rb.vxlan.items():
        assert len(ends) == 2, f"VNI {vni} has {len(ends)} ends, not 2"
        (fa, ba, la), (fb, bb, lb) = ends
        assert fa != fb, f"VNI {vni}: both ends on one host"
        assert la["dst-port"] == lb["dst-port"] and la["mtu"] == lb["mtu"]
        for file, address in ((fb, la["remote"]), (fa, lb["remote"])):  # each end points at the other host
            assert rb.file_address.setdefault(file, address) == address, f"{file} is reached at two addresses"
        pa, pb = find((fa, ba)), find((fb, bb))
        parent[pa] = pb
    assert len(set(rb.file_address.values())) == len(rb.file_address), "two hosts share an address"
    classes: dict[tuple[Path, str], set[tuple[str, str]]] = {}
    for key, ends in members.items():
        classes.setdefault(find(key), set()).update(ends)
    rb.segments = [frozenset(v) for v in classes.values()]
    return rb


def expected_segments(lab: Lab) -> list[frozenset[tuple[str, str]]]:
    return [
        frozenset((n.name, i.name) for n in lab.nodes for i in n.interfaces if i.segment == seg.name)
        for seg in lab.segments
    ]


def assert_same_lab(lab: Lab, rb: ReadBack) -> None:
    assert set(rb.nodes) == {n.name for n in lab.nodes}
    for node in lab.nodes:
        got = rb.nodes[node.name]
        spec = kind_for(node).container_spec(lab, node)
        assert got["image"] == IMAGE and got["network-mode"] == "none"
        assert shlex.split(got["cmd"]) == list(spec.command)
        assert got["labels"] == node_labels(lab, node)
        assert got.get("sysctls", {}) == spec.sysctls and got.get("devices", []) == list(spec.devices)
        assert set(got.get("cap-add", [])) == set(spec.cap_add)
        for iface in node.interfaces:
            assert rb.addresses[(node.name, iface.name)] == str(iface.address), (node.name, iface.name)
        if node.is_router:
            # the very node config `vpnlab deploy` writes: mesh and whatever later features add go along
            assert rb.configs[node.name].to_json() == build_node_config(lab, node).to_json()
        elif node.gateway is not None:  # hosts; a NAT device sits on the internet itself
            assert rb.routes[node.name] == str(node.gateway)
    assert sorted(rb.segments, key=sorted) == sorted(expected_segments(lab), key=sorted)


# ------------------------------------------------------------------ one host


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
def test_every_ready_topology_exports_validates_and_reads_back_as_the_lab(
    topology: Path, tmp_path: Path, validator: Any
) -> None:
    lab = load_topology(topology)
    written = clab.write_export(clab.export_lab(lab, IMAGE), tmp_path)
    assert written == [tmp_path / f"{lab.name}.clab.yml"]
    rb = read_back(tmp_path, validator)
    assert_same_lab(lab, rb)
    assert not rb.vxlan and set(rb.link_mtu.values()) == {1500}  # containerlab's own default would be 9500
    doc = yaml.safe_load(written[0].read_text())
    assert doc["name"] == lab.name and doc["prefix"] == "vpnlab"  # containers vpnlab-<lab>-<node>, as deploy names them


def test_node_configs_are_written_for_root_only(tmp_path: Path) -> None:
    lab = load_topology(REPO / "topologies" / "minimal.yml")
    clab.write_export(clab.export_lab(lab, IMAGE), tmp_path)
    configs = sorted(tmp_path.rglob("node.json"))
    assert len(configs) == len(lab.routers)
    assert all(p.stat().st_mode & 0o077 == 0 for p in configs)  # they hold the PSK
    assert "vpnlab-minimal-psk" not in (tmp_path / "minimal.clab.yml").read_text()


def test_what_a_kind_adds_to_its_spec_goes_along_without_exporter_code(tmp_path: Path, validator: Any) -> None:
    """A later feature (contexts, clusters, NAT) reaches the container through its ContainerSpec."""
    import dataclasses

    lab = load_topology(REPO / "topologies" / "minimal.yml")
    hub = lab.node("hub")
    spec = kind_for(hub).container_spec(lab, hub)
    extra = dataclasses.replace(
        spec,
        files={**spec.files, "/etc/vpnlab/cluster.json": b'{"vip": "198.51.100.5"}'},
        env={"VPNLAB_FEATURE": "on"},
        sysctls={**spec.sysctls, "net.ipv4.ip_nonlocal_bind": "1"},
    )
    specs = {n.name: kind_for(n).container_spec(lab, n) for n in lab.nodes} | {"hub": extra}
    clab.write_export(clab.export_lab(lab, IMAGE, specs=specs), tmp_path)
    read_back(tmp_path, validator)
    node = yaml.safe_load((tmp_path / "minimal.clab.yml").read_text())["topology"]["nodes"]["hub"]
    assert "files/hub/etc/vpnlab/cluster.json:/etc/vpnlab/cluster.json:ro" in node["binds"]
    assert (tmp_path / "files/hub/etc/vpnlab/cluster.json").read_bytes() == b'{"vip": "198.51.100.5"}'
    assert node["env"] == {"VPNLAB_FEATURE": "on"} and node["sysctls"]["net.ipv4.ip_nonlocal_bind"] == "1"


def test_a_libreswan_node_gets_its_own_image(tmp_path: Path, validator: Any) -> None:
    from vpnlab.image_libreswan import libreswan_tag

    path = tmp_path / "ls.yml"
    path.write_text('name: lsexp\nsecret: {psk: "x"}\nnodes:\n  hub: {role: hub, implementation: libreswan}\n'
                    '  br1: {role: branch, hubs: [hub]}\n')
    lab = load_topology(path)
    out = tmp_path / "out"
    clab.write_export(clab.export_lab(lab, IMAGE), out)
    read_back(out, validator)
    text = (out / "lsexp.clab.yml").read_text()
    nodes = yaml.safe_load(text)["topology"]["nodes"]
    assert nodes["hub"]["image"] == libreswan_tag() and nodes["br1"]["image"] == IMAGE
    assert f"Image {libreswan_tag()} too" in text
    assert "files/hub/etc/ipsec.conf:/etc/ipsec.conf:ro" in nodes["hub"]["binds"]


# ------------------------------------------------------------------ several hosts

HOSTS = ["h1=192.0.2.11", "h2=192.0.2.12", "h3=192.0.2.13"]


@pytest.fixture(scope="module")
def bench20() -> Lab:
    return load_topology(REPO / "topologies" / "bench-20.yml")


def test_bench20_split_over_three_hosts_reads_back_as_the_lab(bench20: Lab, tmp_path: Path, validator: Any) -> None:
    placement = place(bench20, parse_hosts(HOSTS))
    export = clab.export_lab(bench20, IMAGE, placement)
    written = clab.write_export(export, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [f"h{i}/bench20.clab.yml" for i in (1, 2, 3)]
    rb = read_back(tmp_path, validator)
    assert_same_lab(bench20, rb)  # every node on exactly one host (read_back refuses a node twice)
    by_file = {f: sorted(n for n, g in rb.node_file.items() if g == f) for f in set(rb.node_file.values())}
    assert {f.parent.name: nodes for f, nodes in by_file.items()} == {
        h: sorted(placement.nodes_on(h)) for h in ("h1", "h2", "h3")
    }
    counts = sorted(len(v) for v in by_file.values())
    assert counts[-1] - counts[0] <= 2  # a router and its one host move together
    # LANs stay with their router; only the underlay crosses hosts, in a star: 2 pairs, 2 VNIs
    assert len(rb.vxlan) == 2 and len(set(rb.vxlan)) == 2
    assert {rb.file_address[f] for f in rb.file_address} == {"192.0.2.11", "192.0.2.12", "192.0.2.13"}
    for host in bench20.hosts:
        assert rb.node_file[host.name] == rb.node_file[host.router]
    wan = {k: v for k, v in rb.link_mtu.items() if k[1] == "wan0"}
    assert set(wan.values()) == {1450}, "every port of the VXLAN-joined internet: 1500 - 50"
    assert {v for k, v in rb.link_mtu.items() if k[1] != "wan0"} == {1500}
    for vni, ends in rb.vxlan.items():
        assert all(link["mtu"] == 1450 and link["vni"] == vni for _, _, link in ends)


def test_the_mtu_and_its_ipsec_consequence_are_written_in_each_file(bench20: Lab, tmp_path: Path) -> None:
    export = clab.export_lab(bench20, IMAGE, place(bench20, parse_hosts(HOSTS[:2])))
    text = export.files[1].text()
    assert re.search(r"^# MTU: 1450 on every port", text, re.M)
    assert "VXLAN over IPv4 takes 50" in text
    assert "at most\n#   1386 bytes" in text  # max_inner_len(1450 - 28, AES-GCM-16)
    assert "MTU of 1550 or more" in text
    roomy = clab.export_lab(bench20, IMAGE, place(bench20, parse_hosts(HOSTS[:2]), host_mtu=1550))
    assert roomy.segment_mtu["inet"] == 1500
    assert "fit in 1500 bytes" in roomy.files[0].text()


def test_pinned_nodes_stay_where_placed_and_end_hosts_follow_their_router(bench20: Lab) -> None:
    placement = place(bench20, parse_hosts(HOSTS), pins={"br5": "h3", "br6-h1": "h1"})
    assert placement.node_host["br5"] == placement.node_host["br5-h1"] == "h3"
    assert placement.node_host["br6-h1"] == "h1"
    export = clab.export_lab(bench20, IMAGE, placement)
    lan6 = [v for v in export.vxlan if v.segment == "lan-br6"]
    if placement.node_host["br6"] != "h1":  # the LAN now spans two hosts: one VXLAN pair for it
        assert len(lan6) == 1 and export.segment_mtu["lan-br6"] == 1450
    assert len({v.vni for v in export.vxlan}) == len(export.vxlan)


def test_one_segment_over_many_hosts_is_a_star_not_a_loop(bench20: Lab) -> None:
    hosts = parse_hosts([f"m{i}=192.0.2.{i}" for i in range(1, 6)])
    export = clab.export_lab(bench20, IMAGE, place(bench20, hosts), vni_base=5000)
    inet = [v for v in export.vxlan if v.segment == "inet"]
    assert len(inet) == 4 and len({v.hosts[0] for v in inet}) == 1  # n hosts, n-1 links, one centre
    assert [v.vni for v in export.vxlan] == list(range(5000, 5000 + len(export.vxlan)))


def test_a_host_the_split_leaves_empty_gets_no_file() -> None:
    lab = load_topology(REPO / "topologies" / "minimal.yml")
    hosts = parse_hosts([f"m{i}=192.0.2.{i}" for i in range(1, 5)])
    export = clab.export_lab(lab, IMAGE, place(lab, hosts))
    assert [f.host.name for f in export.files if f.host] == ["m1", "m2", "m3"] and export.empty_hosts == ("m4",)


def test_vnis_past_the_top_are_refused(bench20: Lab) -> None:
    with pytest.raises(ExportError, match="VXLAN links from VNI 16777215"):
        clab.export_lab(bench20, IMAGE, place(bench20, parse_hosts(HOSTS)), vni_base=16_777_215)


# ------------------------------------------------------------------ the output directory


def test_a_directory_with_other_files_is_refused_and_left_alone(tmp_path: Path) -> None:
    lab = load_topology(REPO / "topologies" / "minimal.yml")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty and holds no earlier vpnlab export"):
        clab.write_export(clab.export_lab(lab, IMAGE), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_new_export_replaces_exactly_the_earlier_one(bench20: Lab, tmp_path: Path) -> None:
    clab.write_export(clab.export_lab(bench20, IMAGE, place(bench20, parse_hosts(HOSTS))), tmp_path)
    (tmp_path / "h1" / "clab-notes").write_text("containerlab's or the user's: not ours to delete")
    clab.write_export(clab.export_lab(bench20, IMAGE), tmp_path)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert "h2/bench20.clab.yml" not in left and "bench20.clab.yml" in left and "h1/clab-notes" in left


def test_the_schema_check_itself_catches_a_broken_file(bench20: Lab, validator: Any) -> None:
    export = clab.export_lab(bench20, IMAGE, place(bench20, parse_hosts(HOSTS[:2])))
    doc = yaml.safe_load(export.files[0].text())
    assert not list(validator.iter_errors(doc))
    vxlan = next(link for link in doc["topology"]["links"] if link.get("type") == "vxlan")
    vxlan["remote"] = "192.0.2.300"  # checked by containerlab's Go pattern, through `regex`
    assert list(validator.iter_errors(doc))
    vxlan["remote"], doc["topology"]["nodes"]["hub"]["restart"] = "192.0.2.12", "no"  # an unknown node key
    assert list(validator.iter_errors(doc))
