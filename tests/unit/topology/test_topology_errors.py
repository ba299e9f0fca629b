"""Every bad topology file gives one TopologyError line naming the file, the field and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vpnlab.errors import TopologyError
from vpnlab.topology import load_topology

GOOD = """\
name: t
secret: {psk: s3cret}
nodes:
  hub: {role: hub, hosts: 1}
  br1: {role: branch, hosts: 1}
"""


def write(tmp_path: Path, text: str, name: str = "x.yml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(tmp_path: Path, text: str) -> TopologyError:
    p = write(tmp_path, text)
    with pytest.raises(TopologyError) as info:
        load_topology(p)
    err = info.value
    msg = str(err)
    assert "\n" not in msg, msg
    assert msg.startswith(f"{p}: "), msg
    return err


def test_good_file_loads(tmp_path: Path) -> None:
    lab = load_topology(write(tmp_path, GOOD))
    assert [n.name for n in lab.nodes] == ["hub", "hub-h1", "br1", "br1-h1"]


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yml: file not found$"):
        load_topology(tmp_path / "nope.yml")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="is a directory"):
        load_topology(tmp_path)


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert "empty" in error_of(tmp_path, text).problem


def test_not_yaml(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: [unclosed\nnodes: {\n")
    assert err.problem.startswith("not valid YAML: ")
    assert "line" in err.problem


def test_binary_file(tmp_path: Path) -> None:
    p = tmp_path / "b.yml"
    p.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(TopologyError, match="not valid UTF-8"):
        load_topology(p)


@pytest.mark.parametrize(("text", "got"), [("- a\n- b\n", "a list"), ("just text\n", "the string 'just text'"), ("42\n", "int 42")])
def test_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    err = error_of(tmp_path, text)
    assert err.problem == f"expected a mapping of keys (name, secret, nodes, ...), got {got}"


def test_duplicate_node_names(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br1: {role: branch}\n")
    assert (err.where, err.problem) == ("nodes", "duplicate node 'br1' (lines 5 and 6)")


def test_duplicate_key_inside_node(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2:\n    role: branch\n    role: hub\n")
    assert err.where == "nodes.br2"
    assert err.problem.startswith("duplicate key 'role'")


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "name: again\n")
    assert (err.where, err.problem) == ("", "duplicate key 'name' (lines 1 and 6)")


def test_branch_with_unknown_hub(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, hubs: [hub9]}\n")
    assert str(err).endswith("x.yml: nodes.br2.hubs: unknown hub 'hub9' (hubs in this lab: hub)")


def test_branch_pointing_at_a_branch(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, hubs: [br1]}\n")
    assert (err.where, err.problem) == ("nodes.br2.hubs", "'br1' is a branch, not a hub (hubs in this lab: hub)")


def test_branch_must_name_hub_when_several(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  hub2: {role: hub}\n")
    assert err.where == "nodes.br1.hubs"
    assert "hubs in this lab: hub, hub2" in err.problem


def test_branch_without_any_hub(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: t\nsecret: {psk: a}\nnodes:\n  br1: {role: branch}\n")
    assert err.where == "nodes.br1" and "has none" in err.problem


def test_hubs_only_on_branches(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  hub2: {role: hub, hubs: [hub]}\n")
    assert err.where == "nodes.hub2"
    assert err.problem.startswith("key 'hubs' is not allowed for role hub")


def test_overlapping_lans_name_both_nodes(tmp_path: Path) -> None:
    err = error_of(
        tmp_path,
        """\
        name: t
        secret: {psk: a}
        nodes:
          hub: {role: hub, lan: 10.1.0.0/16}
          br1: {role: branch, lan: 10.1.2.0/24}
        """,
    )
    assert (err.where, err.problem) == ("nodes.br1.lan", "LAN 10.1.2.0/24 of br1 overlaps hub's LAN 10.1.0.0/16")


def test_lan_overlapping_own_lan(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, lan: [10.9.0.0/24, 10.9.0.128/25]}\n")
    assert "another LAN of the same node" in err.problem


def test_lan_overlapping_underlay(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, lan: 198.51.100.0/25}\n")
    assert "overlaps the underlay" in err.problem


@pytest.mark.parametrize(
    ("cidr", "problem"),
    [
        ("10.0.0.0/33", "invalid CIDR '10.0.0.0/33'"),
        ("10.0.0.300/24", "invalid CIDR '10.0.0.300/24'"),
        ("10.0.0.0", "invalid CIDR '10.0.0.0': missing prefix length (such as /24)"),
        ("10.0.0.1/24", "invalid CIDR '10.0.0.1/24': host bits are set (did you mean 10.0.0.0/24?)"),
        ("fd00::/64", "invalid CIDR 'fd00::/64': only IPv4 is supported"),
    ],
)
def test_invalid_cidr(tmp_path: Path, cidr: str, problem: str) -> None:
    err = error_of(tmp_path, GOOD + f"  br2: {{role: branch, lan: '{cidr}'}}\n")
    assert (err.where, err.problem) == ("nodes.br2.lan", problem)


def test_lan_too_small_for_router(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, lan: 10.9.0.0/31}\n")
    assert "too small" in err.problem


def test_public_outside_underlay(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, public: 203.0.113.5}\n")
    assert (err.where, err.problem) == ("nodes.br2.public", "203.0.113.5 is outside the underlay (internet: 198.51.100.0/24)")


def test_public_collides_with_other_node(tmp_path: Path) -> None:
    err = error_of(
        tmp_path,
        GOOD.replace("hub: {role: hub, hosts: 1}", "hub: {role: hub, public: 198.51.100.40}")
        + "  br2: {role: branch, public: 198.51.100.40}\n",
    )
    assert (err.where, err.problem) == ("nodes.br2.public", "198.51.100.40 is already used by hub")


def test_public_is_broadcast(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, public: 198.51.100.255}\n")
    assert "broadcast" in err.problem


def test_public_not_an_address(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, public: 198.51.100}\n")
    assert (err.where, err.problem) == ("nodes.br2.public", "invalid IPv4 address '198.51.100'")


def test_missing_secret(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: t\nnodes:\n  hub: {role: hub}\n  br1: {role: branch}\n")
    assert err.where == "secret"
    assert err.problem.startswith("missing: the tunnel br1-hub authenticates with a PSK")


@pytest.mark.parametrize("secret", ["{}", "{psk: a, psk_file: b}"])
def test_secret_needs_exactly_one(tmp_path: Path, secret: str) -> None:
    err = error_of(tmp_path, GOOD.replace("{psk: s3cret}", secret))
    assert (err.where, err.problem) == ("secret", "give exactly one of psk or psk_file")


def test_empty_psk(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("{psk: s3cret}", "{psk: ''}"))
    assert err.problem == "psk is empty"


def test_psk_file_not_found(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("{psk: s3cret}", "{psk_file: lab.psk}"))
    assert err.where == "secret.psk_file"
    assert err.problem == f"file not found: {tmp_path / 'lab.psk'}"


def test_psk_file_empty(tmp_path: Path) -> None:
    (tmp_path / "lab.psk").write_text("\n")
    err = error_of(tmp_path, GOOD.replace("{psk: s3cret}", "{psk_file: lab.psk}"))
    assert (err.where, err.problem) == ("secret.psk_file", f"{tmp_path / 'lab.psk'} is empty")


def test_psk_file_relative_to_topology(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "lab.psk").write_text("from-a-file\n")
    lab = load_topology(write(tmp_path, GOOD.replace("{psk: s3cret}", "{psk_file: keys/lab.psk}")))
    assert lab.psk == "from-a-file"


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (GOOD + "  br2: {role: branch, hbus: [hub]}\n", "nodes.br2", "unknown key 'hbus' (did you mean 'hubs'?)"),
        (GOOD.replace("name: t", "nmae: t\nname: t"), "", "unknown key 'nmae' (did you mean 'name'?)"),
        (GOOD + "defaults: {dataplne: auto}\n", "defaults", "unknown key 'dataplne' (did you mean 'dataplane'?)"),
        (GOOD + "defaults: {mesh: {idle_timeot: 3}}\n", "defaults.mesh", "unknown key 'idle_timeot' (did you mean 'idle_timeout'?)"),
        (GOOD.replace("{psk: s3cret}", "{pks: s3cret}"), "secret", "unknown key 'pks' (did you mean 'psk'?)"),
        (GOOD + "  br2: {role: branch, contexts: [{name: a, lna: 10.5.0.0/24}]}\n", "nodes.br2.contexts.0", "unknown key 'lna' (did you mean 'lan'?)"),
        (GOOD + "  br2: {role: branch, zzz: 1}\n", "nodes.br2", "unknown key 'zzz' (valid keys: role, implementation, lan, hosts, public, dataplane, mesh, contexts, auth, secret, crypto, libreswan, hubs, nat, follow_redirects, router, address, type, mapping_timeout)"),
    ],
)
def test_unknown_keys_suggest_closest(tmp_path: Path, text: str, where: str, problem: str) -> None:
    err = error_of(tmp_path, text)
    assert (err.where, err.problem) == (where, problem)


@pytest.mark.parametrize("name", ["Lab", "1lab", "a-very-long-lab-name", "lab_x", "", "lab.x"])
def test_bad_lab_name(tmp_path: Path, name: str) -> None:
    err = error_of(tmp_path, GOOD.replace("name: t", f"name: '{name}'"))
    assert err.where == "name"
    assert err.problem.startswith(f"bad lab name {name!r}")


def test_lab_name_not_a_string(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace("name: t", "name: 12"))
    assert (err.where, err.problem) == ("name", "expected a string, got int 12")


@pytest.mark.parametrize("name", ["Hub", "hub_1", "a234567890123456", "9x"])
def test_bad_node_name(tmp_path: Path, name: str) -> None:
    err = error_of(tmp_path, GOOD + f"  '{name}': {{role: hub}}\n")
    assert err.where == "nodes"
    assert err.problem.startswith(f"bad node name {name!r}")


def test_unknown_role(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: spoke}\n")
    assert err.where == "nodes.br2.role"
    assert err.problem == "'spoke' is not valid (expected 'hub', 'branch', 'gateway', 'host' or 'nat')"


def test_missing_role(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {lan: 10.9.0.0/24}\n")
    assert err.where == "nodes.br2"
    assert err.problem.startswith("missing required key 'role'")


def test_unknown_implementation(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, implementation: vyos}\n")
    assert err.where == "nodes.br2.implementation"


def test_host_router_unknown(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  pc: {role: host, router: br9}\n")
    assert (err.where, err.problem) == ("nodes.pc.router", "unknown router 'br9' (routers in this lab: hub, br1)")


def test_host_router_is_a_host(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  pc: {role: host, router: br1}\n  pc2: {role: host, router: pc}\n")
    assert (err.where, err.problem) == ("nodes.pc2.router", "'pc' is a host, not a router (routers in this lab: hub, br1)")


def test_host_needs_router(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  pc: {role: host}\n")
    assert err.where == "nodes.pc" and "needs 'router'" in err.problem


def test_host_with_router_keys(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  pc: {role: host, router: br1, lan: 10.9.0.0/24}\n")
    assert err.problem == "key 'lan' is not allowed for role host (a host takes: address, role, router)"


def test_host_address_outside_router_lans(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  pc: {role: host, router: br1, address: 10.0.0.50}\n")
    assert (err.where, err.problem) == ("nodes.pc.address", "10.0.0.50 is not in any LAN of br1 (10.1.0.0/24)")


def test_host_address_collides_with_router(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  pc: {role: host, router: br1, address: 10.1.0.1}\n")
    assert err.problem == "10.1.0.1 is already used by br1"


def test_host_address_collides_with_host(tmp_path: Path) -> None:
    err = error_of(
        tmp_path, GOOD + "  pc: {role: host, router: br1, address: 10.1.0.7}\n  pc2: {role: host, router: br1, address: 10.1.0.7}\n"
    )
    assert (err.where, err.problem) == ("nodes.pc2.address", "10.1.0.7 is already used by pc")


def test_generated_host_name_collides(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br1-h1: {role: host, router: hub}\n")
    assert (err.where, err.problem) == ("nodes.br1.hosts", "host name 'br1-h1' is already used by another node")


def test_generated_host_name_too_long(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  branch-num-0001: {role: branch, hosts: 1}\n")
    assert "longer than 15 characters" in err.problem


def test_lan_too_small_for_hosts(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, lan: 10.9.0.0/28, hosts: 6}\n")
    assert err.where == "nodes.br2.lan"
    assert err.problem.startswith("LAN 10.9.0.0/28 is too small for 6 planned hosts")


def test_lan_just_big_enough(tmp_path: Path) -> None:
    lab = load_topology(write(tmp_path, GOOD + "  br2: {role: branch, lan: 10.9.0.0/28, hosts: 5}\n"))
    assert str(lab.node("br2-h5").interfaces[0].address) == "10.9.0.14/28"


@pytest.mark.parametrize("hosts", ["yes", "'3'", "-1", "[a, a]", "[Bad]"])
def test_bad_hosts(tmp_path: Path, hosts: str) -> None:
    err = error_of(tmp_path, GOOD + f"  br2: {{role: branch, hosts: {hosts}}}\n")
    assert err.where == "nodes.br2.hosts"


@pytest.mark.parametrize(
    ("internet", "problem"),
    [
        ("fd00::/64", "invalid CIDR 'fd00::/64': only IPv4 is supported"),
        ("198.51.100.0/29", "underlay 198.51.100.0/29 is too small: use a /28 or larger"),
        ("198.51.100.7/24", "invalid CIDR '198.51.100.7/24': host bits are set (did you mean 198.51.100.0/24?)"),
        ("banana", "invalid CIDR 'banana': missing prefix length (such as /24)"),
    ],
)
def test_bad_underlay(tmp_path: Path, internet: str, problem: str) -> None:
    err = error_of(tmp_path, GOOD + f"internet: '{internet}'\n")
    assert (err.where, err.problem) == ("internet", problem)


def test_underlay_too_small_for_routers(tmp_path: Path) -> None:
    text = GOOD + "".join(f"  b{i}: {{role: branch}}\n" for i in range(4)) + "internet: 203.0.113.0/28\n"
    err = error_of(tmp_path, text)
    assert err.where == "internet"
    assert err.problem.startswith("underlay 203.0.113.0/28 is too small for 6 routers")


def test_nat_branch_with_public(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: {role: branch, nat: true, public: 198.51.100.99}\n")
    assert "nat: true" in err.problem


def test_nodes_empty(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: t\nsecret: {psk: a}\nnodes: {}\n")
    assert (err.where, err.problem) == ("nodes", "must not be empty")


def test_node_not_a_mapping(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  br2: branch\n")
    assert (err.where, err.problem) == ("nodes.br2", "expected a mapping, got the string 'branch'")


def test_mesh_bad_values(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "defaults: {mesh: {idle_timeout: 0}}\n")
    assert err.where == "defaults.mesh.idle_timeout"
    assert "greater than 0" in err.problem


def test_cluster_member_must_be_gateway(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "clusters:\n  lb: {members: [br1]}\n")
    assert (err.where, err.problem) == ("clusters.lb.members", "'br1' is a branch, not a gateway")


def test_name_override(tmp_path: Path) -> None:
    p = write(tmp_path, GOOD)
    assert load_topology(p, name="other").name == "other"
    with pytest.raises(TopologyError, match="bad lab name 'Other'"):
        load_topology(p, name="Other")


def test_psk_file_with_several_lines(tmp_path: Path) -> None:
    (tmp_path / "lab.psk").write_text("one\ntwo\n")
    err = error_of(tmp_path, GOOD.replace("{psk: s3cret}", "{psk_file: lab.psk}"))
    assert err.problem.endswith("must hold one line, the key")


def test_nodes_null(tmp_path: Path) -> None:
    err = error_of(tmp_path, "name: t\nsecret: {psk: a}\nnodes:\n")
    assert (err.where, err.problem) == ("nodes", "expected a mapping, got nothing")


def test_yaml_boolean_node_name(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "  on: {role: hub}\n")
    assert (err.where, err.problem) == ("nodes", "node names must be strings, got True (quote it)")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("field", ["role", "lan", "hosts"])
def test_nested_aliases_are_refused_before_they_expand(tmp_path: Path, field: str) -> None:
    # Nine anchors of ten aliases each stand for 10**9 values: validating or quoting them in an
    # error message used to run for minutes and take gigabytes.
    chain = ['&a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    chain += [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    value = f"[{', '.join(chain)}]"
    role = value if field == "role" else "hub"
    extra = "" if field == "role" else f", {field}: {value}"
    err = error_of(tmp_path, f"name: t\nsecret: {{psk: s}}\nnodes:\n  hub: {{role: {role}{extra}}}\n")
    assert "aliases expand to more than" in err.problem


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    lab = load_topology(write(tmp_path, """\
        name: t
        secret: {psk: s3cret}
        nodes:
          hub: {role: hub, hosts: &two 2}
          br1: {role: branch, hosts: *two}
        """))
    assert [n.name for n in lab.hosts] == ["hub-h1", "hub-h2", "br1-h1", "br1-h2"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("target, problem", [("/dev/zero", "is not a regular file"), ("big.psk", "larger than 4096 bytes")])
def test_psk_file_that_is_no_key_file_is_refused_without_reading_it_all(
    tmp_path: Path, target: str, problem: str
) -> None:
    (tmp_path / "big.psk").write_bytes(b"k" * 100_000)
    err = error_of(tmp_path, GOOD.replace("{psk: s3cret}", f"{{psk_file: {target}}}"))
    assert err.where == "secret.psk_file" and problem in err.problem


@pytest.mark.timeout(20)
def test_a_device_or_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="^/dev/zero: is a device, not a topology file$"):
        load_topology("/dev/zero")
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(TopologyError, match="larger than 1024 KiB"):
        load_topology(big)


def test_mesh_enabled_on_a_strongswan_node_is_refused_not_ignored(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD.replace(
        "br1: {role: branch, hosts: 1}", "br1: {role: branch, implementation: strongswan, mesh: {enabled: true}}"
    ))
    assert err.where == "nodes.br1" and "need implementation: agent" in err.problem
    # the lab-wide default still applies to agent nodes only, with no error
    lab = load_topology(write(tmp_path, GOOD.replace(
        "br1: {role: branch, hosts: 1}", "br1: {role: branch, implementation: strongswan}"
    ).replace("nodes:", "defaults: {mesh: {enabled: true}}\nnodes:"), "ok.yml"))
    assert lab.node("br1").implementation == "strongswan"
