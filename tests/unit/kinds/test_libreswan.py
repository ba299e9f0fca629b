"""The libreswan kind: ipsec.conf/ipsec.secrets rendered from the topology, the image it names, and
the topology's one-line refusals of what a libreswan node cannot do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vpnlab.bringup import expected_tunnels
from vpnlab.errors import TopologyError
from vpnlab.image_libreswan import libreswan_tag
from vpnlab.kinds.libreswan_conf import esp_proposal, ike_proposal, supernet
from vpnlab.kinds.registry import kind_for
from vpnlab.topology import load_topology
from vpnlab.topology.model import Lab
from vpnlab_agent.config import CONFIG_PATH

LAB = """\
name: lsunit
secret: {psk: "unit-psk-long-enough"}
nodes:
  gw1: {role: gateway, lan: 10.0.1.0/24}
  gw2: {role: gateway, lan: 10.0.2.0/24}
  ls1: {role: branch, implementation: libreswan, hubs: [lb], lan: 10.1.0.0/24}
  lsgw: {role: hub, implementation: libreswan, lan: 10.5.0.0/24, libreswan: {redirect_to: lstarget}}
  lsgwa: {role: hub, implementation: libreswan, lan: 10.6.0.0/24, libreswan: {redirect_to: lstarget, redirect: auth}}
  lstarget: {role: hub, implementation: libreswan, lan: 10.7.0.0/24}
  br1: {role: branch, hubs: [lsgw], lan: 10.11.0.0/24, follow_redirects: true}
  br2: {role: branch, hubs: [lsgwa], lan: 10.12.0.0/24, follow_redirects: true, secret: {psk: "br2-own-psk"}}
clusters:
  lb: {members: [gw1, gw2]}
"""


def load(tmp_path: Path, text: str) -> Lab:
    path = tmp_path / "x.yml"
    path.write_text(textwrap.dedent(text))
    return load_topology(path)


def files(lab: Lab, node: str) -> tuple[str, str]:
    spec = kind_for(lab.node(node)).container_spec(lab, lab.node(node))
    return spec.files["/etc/ipsec.conf"].decode(), spec.files["/etc/ipsec.secrets"].decode()


def conn(conf: str, name: str) -> dict[str, str]:
    block = conf.split(f"\nconn {name}\n", 1)[1].split("\nconn ", 1)[0]
    return dict(line.strip().split("=", 1) for line in block.splitlines() if "=" in line and not line.strip().startswith("#"))


def test_client_of_a_cluster_knows_only_the_virtual_address_and_accepts_redirects(tmp_path: Path) -> None:
    lab = load(tmp_path, LAB)
    spec = kind_for(lab.node("ls1")).container_spec(lab, lab.node("ls1"))
    assert spec.image == libreswan_tag() and spec.has_agent
    assert spec.command == ("python3", "-m", "vpnlab_libreswan", "run")
    assert list(spec.files)[-1] == CONFIG_PATH  # the agent starts once it is there: pluto's files first
    conf, secrets = files(lab, "ls1")
    c = conn(conf, "lb")
    assert c["right"] == str(lab.clusters[0].virtual_address) and c["rightid"] == "@lb"
    assert c["leftid"] == "@ls1" and c["leftsubnet"] == "10.1.0.0/24"
    assert c["rightsubnet"] == "10.0.0.0/22" and c["narrowing"] == "yes"  # both members' LANs, narrowed there
    assert c["accept-redirect"] == "yes" and c["auto"] == "start" and c["ikev2"] == "insist"
    assert c["ike"] == "aes_gcm128-sha2_256-dh19" and c["esp"] == "aes_gcm128"
    assert "global-redirect" not in conf
    assert '@ls1 @lb : PSK "unit-psk-long-enough"' in secrets.splitlines()


def test_gateway_redirects_at_init_globally_and_at_auth_per_conn(tmp_path: Path) -> None:
    lab = load(tmp_path, LAB)
    target = str(lab.node("lstarget").public_address)
    conf, _ = files(lab, "lsgw")
    assert f"\tglobal-redirect=yes\n\tglobal-redirect-to={target}\n" in conf
    assert "redirect-to" not in conn(conf, "br1") and conn(conf, "br1")["auto"] == "add"
    conf, secrets = files(lab, "lsgwa")
    assert "global-redirect" not in conf
    c = conn(conf, "br2")
    assert c["send-redirect"] == "yes" and c["redirect-to"] == target
    assert '@lsgwa @br2 : PSK "br2-own-psk"' in secrets


def test_redirect_target_serves_the_redirecting_hubs_clients_as_them(tmp_path: Path) -> None:
    lab = load(tmp_path, LAB)
    conf, secrets = files(lab, "lstarget")
    c1, c2 = conn(conf, "br1-via-lsgw"), conn(conf, "br2-via-lsgwa")
    assert (c1["leftid"], c1["rightid"], c1["auto"]) == ("@lsgw", "@br1", "add")
    assert (c2["leftid"], c2["rightid"]) == ("@lsgwa", "@br2")
    assert c1["left"] == str(lab.node("lstarget").public_address)
    assert secrets.splitlines()[1:] == ['@lsgw @br1 : PSK "unit-psk-long-enough"', '@lsgwa @br2 : PSK "br2-own-psk"']


def test_deploy_does_not_wait_for_tunnels_with_a_libreswan_end(tmp_path: Path) -> None:
    lab = load(tmp_path, LAB)
    assert [t for t in expected_tunnels(lab) if {"ls1", "lsgw", "lsgwa"} & set(t)] == []


def test_proposals_in_plutos_syntax() -> None:
    assert ike_proposal("aes256gcm16-prfsha384-ecp384") == "aes_gcm256-sha2_384-dh20"
    assert ike_proposal("aes128-sha256-modp2048") == "aes128-sha2_256-modp2048"
    assert ike_proposal("aes128gcm16-prfsha256-x25519") == "aes_gcm128-sha2_256-dh31"
    assert esp_proposal("aes128-sha256") == "aes128-sha2_256"
    with pytest.raises(ValueError, match="one cipher, one hash"):
        ike_proposal("aes128-sha256-prfsha384-ecp256")
    with pytest.raises(ValueError, match="PFS"):
        esp_proposal("aes128gcm16-ecp256")
    assert supernet(("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24")) == "10.0.0.0/22"


@pytest.mark.parametrize("node,where,problem", [
    ("{role: hub, libreswan: {accept_redirect: false}}", "nodes.x", "key 'libreswan' needs implementation: libreswan"),
    ("{role: hub, implementation: libreswan, auth: cert}", "nodes.x", "auth: cert is not supported"),
    ("{role: hub, implementation: libreswan, mesh: {enabled: true}}", "nodes.x", "mesh shortcuts need implementation: agent"),
    ("{role: branch, hubs: [hub], implementation: libreswan, libreswan: {redirect_to: hub}}", "nodes.x",
     "only a hub redirects"),
    ("{role: hub, implementation: libreswan, libreswan: {redirect_to: hub}}", "nodes.x.libreswan.redirect_to",
     "'hub' is not another libreswan hub of this lab (libreswan hubs: none)"),
    ("{role: hub, implementation: libreswan, libreswan: {redirect: sometimes}}", "nodes.x.libreswan.redirect", ""),
])
def test_bad_libreswan_nodes_get_one_line(tmp_path: Path, node: str, where: str, problem: str) -> None:
    text = f"""\
        name: lsbad
        secret: {{psk: "x"}}
        nodes:
          hub: {{role: hub}}
          x: {node}
        """
    with pytest.raises(TopologyError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'x.yml'}: {where}"), message
    assert problem in message, message


def test_a_proposal_pluto_cannot_express_names_the_node(tmp_path: Path) -> None:
    from vpnlab.errors import LabError

    lab = load(tmp_path, """\
        name: lsbad
        secret: {psk: "x"}
        nodes:
          hub: {role: hub, implementation: libreswan, crypto: {proposals: [aes128-sha256-prfsha384-ecp256]}}
          br: {role: branch, hubs: [hub], crypto: {proposals: [aes128-sha256-prfsha384-ecp256]}}
        """)
    with pytest.raises(LabError) as info:
        kind_for(lab.node("hub")).container_spec(lab, lab.node("hub"))
    assert str(info.value).startswith(f"{tmp_path / 'x.yml'}: nodes.hub.crypto: IKE proposal"), info.value
    assert "\n" not in str(info.value)
