"""The topology's crypto and auth keys: merged from defaults, checked per tunnel, one line per mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vpnlab.errors import TopologyError
from vpnlab.nodeconfig import build_node_config
from vpnlab.topology import load_topology
from vpnlab.topology.model import Lab

BASE = """\
name: t
secret: {psk: lab-key}
nodes:
  hub: {role: hub}
  br1: {role: branch}
  br2: {role: branch}
"""


def load(tmp_path: Path, text: str) -> Lab:
    p = tmp_path / "t.yml"
    p.write_text(textwrap.dedent(text))
    return load_topology(p)


def error(tmp_path: Path, text: str) -> tuple[str, str]:
    with pytest.raises(TopologyError) as info:
        load(tmp_path, text)
    assert "\n" not in str(info.value)
    return info.value.where, info.value.problem


def test_defaults_then_router_key_by_key(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE.replace("nodes:", textwrap.dedent("""\
        defaults:
          crypto: {proposals: aes256gcm16-prfsha384-ecp384, esp_proposals: [aes256gcm16], dpd_interval: 20,
                   ike_lifetime: 3600, child_lifetime: 1200, rekey_margin: 120}
        nodes:""")).replace("br2: {role: branch}", "br2: {role: branch, crypto: {proposals: [aes256gcm16-prfsha384-ecp384, aes128-sha256-modp3072], child_lifetime: 600}}"))
    br1, br2 = lab.node("br1").crypto, lab.node("br2").crypto
    assert br1.ike_proposals == ("aes256gcm16-prfsha384-ecp384",) and br1.child_lifetime_s == 1200
    assert br2.ike_proposals == ("aes256gcm16-prfsha384-ecp384", "aes128-sha256-modp3072")
    assert (br2.child_lifetime_s, br2.ike_lifetime_s, br2.rekey_margin_s, br2.dpd_interval_s) == (600, 3600, 120, 20)
    ike = build_node_config(lab, lab.node("br2")).ike
    assert ike is not None and (ike.ike_proposals, ike.esp_proposals) == (br2.ike_proposals, ("aes256gcm16",))
    assert (ike.child_lifetime_s, ike.rekey_margin_s, ike.dpd_interval_s) == (600, 120, 20)


def test_nat_keepalive_reaches_the_agent_and_zero_turns_it_off(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE.replace("br1: {role: branch}", "br1: {role: branch, crypto: {nat_keepalive: 0}}"))
    keepalive = {n: build_node_config(lab, lab.node(n)).ike.nat_keepalive_s for n in ("br1", "br2")}  # type: ignore[union-attr]
    assert keepalive == {"br1": 0, "br2": 20}


@pytest.mark.parametrize(
    ("crypto", "where", "problem"),
    [
        ("{proposals: aes128-sha1-modp2048}", "nodes.br1.crypto.proposals",
         "IKE proposal 'aes128-sha1-modp2048': unsupported algorithm 'sha1' (supported: encryption: aes128 "),
        ("{esp_proposals: [aes128gcm16-prfsha256]}", "nodes.br1.crypto.esp_proposals",
         "ESP proposal 'aes128gcm16-prfsha256': unsupported algorithm 'prfsha256'"),
        ("{proposals: aes128gcm16-ecp256}", "nodes.br1.crypto.proposals", "IKE proposal 'aes128gcm16-ecp256'"),
        ("{proposals: []}", "nodes.br1.crypto.proposals", "expected a proposal or a non-empty list"),
        ("{ike_lifetime: 0}", "nodes.br1.crypto.ike_lifetime", "input should be greater than 0, got 0"),
        ("{nat_keepalive: -1}", "nodes.br1.crypto.nat_keepalive", "input should be greater than or equal to 0"),
        ("{rekey_margin: 3600}", "nodes.br1.crypto.rekey_margin",
         "rekey margin 3600 s is not shorter than br1's child lifetime 3600 s"),
        ("{cert_key: dsa}", "nodes.br1.crypto.cert_key", "'dsa' is not valid (expected 'ecdsa-p256' or 'rsa-2048')"),
        ("{fragment_size: 500}", "nodes.br1.crypto.fragment_size",
         "input should be greater than or equal to 576, got 500"),
        ("{fragment_size: 70000}", "nodes.br1.crypto.fragment_size", "input should be less than or equal to 65535"),
        ("{fragment_size: big}", "nodes.br1.crypto.fragment_size", "expected a whole number"),
        ("{fragmentation: maybe}", "nodes.br1.crypto.fragmentation", "expected true or false, got the string 'maybe'"),
        ("{proposals: aes256-sha256-modp3072}", "nodes.br1.crypto.proposals",
         "no IKE proposal in common with hub (br1 offers aes256-sha256-modp3072; hub accepts "
         "aes128gcm16-prfsha256-ecp256)"),
        ("{esp_proposals: aes256-sha256}", "nodes.br1.crypto.esp_proposals", "no ESP proposal in common with hub"),
        ("{propsals: x}", "nodes.br1.crypto", "unknown key 'propsals' (did you mean 'proposals'?)"),
    ],
)
def test_bad_crypto_is_one_line(tmp_path: Path, crypto: str, where: str, problem: str) -> None:
    got_where, got = error(tmp_path, BASE.replace("br1: {role: branch}", f"br1: {{role: branch, crypto: {crypto}}}"))
    assert got_where == where and got.startswith(problem), got


def test_fragmentation_keys(tmp_path: Path) -> None:
    """RFC 7383: on, 1280-byte fragments (strongSwan's default) unless defaults or the router say otherwise."""
    lab = load(tmp_path, BASE.replace("nodes:", "defaults:\n  crypto: {fragment_size: 1000}\nnodes:").replace(
        "br2: {role: branch}", "br2: {role: branch, crypto: {fragmentation: false}}"))
    hub, br2 = (build_node_config(lab, lab.node(n)).ike for n in ("hub", "br2"))
    assert hub is not None and (hub.fragmentation, hub.fragment_size) == (True, 1000)
    assert br2 is not None and (br2.fragmentation, br2.fragment_size) == (False, 1000)
    plain = build_node_config(load(tmp_path, BASE), load(tmp_path, BASE).node("br1")).ike
    assert plain is not None and (plain.fragmentation, plain.fragment_size) == (True, 1280)


def test_auth_values(tmp_path: Path) -> None:
    assert error(tmp_path, BASE.replace("br1: {role: branch}", "br1: {role: branch, auth: rsa}")) == (
        "nodes.br1.auth", "'rsa' is not valid (expected 'psk' or 'cert')")
    lab = load(tmp_path, BASE.replace("nodes:", "defaults: {auth: cert}\nnodes:").replace(
        "br2: {role: branch}", "br2: {role: branch, auth: psk}"))
    assert [n.crypto.auth for n in lab.routers] == ["cert", "cert", "psk"]


def test_psk_per_router_and_per_pair(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE.replace("br1: {role: branch}", "br1: {role: branch, secret: {psk: br1-key}}")
               + "  br3: {role: branch}\nsecrets:\n  - {peers: [hub, br3], psk: pair-key}\n")
    assert lab.psk_between("hub", "br1") == lab.psk_between("br1", "hub") == "br1-key"
    assert lab.psk_between("hub", "br2") == "lab-key"
    assert lab.psk_between("br3", "hub") == "pair-key"
    hub = build_node_config(lab, lab.node("hub")).ike
    assert hub is not None and hub.psk == "lab-key"
    assert {p.name: p.psk for p in hub.peers} == {"br1": "br1-key", "br2": "lab-key", "br3": "pair-key"}
    br1 = build_node_config(lab, lab.node("br1")).ike
    assert br1 is not None and [p.psk for p in br1.peers] == ["br1-key"]


def test_hub_key_serves_branches_without_their_own(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE.replace("secret: {psk: lab-key}\n", "").replace(
        "hub: {role: hub}", "hub: {role: hub, secret: {psk: hub-key}}").replace(
        "br2: {role: branch}", "br2: {role: branch, secret: {psk: br2-key}}"))
    assert (lab.psk, lab.psk_between("hub", "br1"), lab.psk_between("hub", "br2")) == (None, "hub-key", "br2-key")


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (BASE.replace("secret: {psk: lab-key}\n", "").replace("br1: {role: branch}", "br1: {role: branch, secret: {psk: k}}"),
         "secret", "missing: the tunnel br2-hub authenticates with a PSK and neither the pair, br2 nor hub has a secret"),
        (BASE + "secrets:\n  - {peers: [hub, br9], psk: k}\n", "secrets.0.peers", "unknown router 'br9'"),
        (BASE + "secrets:\n  - {peers: [hub, hub], psk: k}\n", "secrets.0.peers", "a pair needs two different routers"),
        (BASE + "secrets:\n  - {peers: [hub, br1], psk: k}\n  - {peers: [br1, hub], psk: j}\n", "secrets.1.peers",
         "a secret for br1 and hub is already given"),
        (BASE + "secrets:\n  - {peers: [hub, br1], psk_file: nope}\n", "secrets.0.psk_file", "file not found"),
        (BASE.replace("br1: {role: branch}", "br1: {role: branch, secret: {psk: ''}}"), "nodes.br1.secret", "psk is empty"),
        (BASE.replace("secret: {psk: lab-key}\n", "").replace("hub: {role: hub}", "hub: {role: hub, secret: {psk: h}}")
         .replace("br1: {role: branch}", "br1: {role: branch, mesh: {enabled: true}}"), "secret",
         "missing: mesh shortcuts of br1 authenticate with the lab-wide PSK"),
    ],
)
def test_bad_secrets(tmp_path: Path, text: str, where: str, problem: str) -> None:
    got_where, got = error(tmp_path, text)
    assert got_where == where and got.startswith(problem), got


def test_an_all_certificate_lab_needs_no_psk(tmp_path: Path) -> None:
    lab = load(tmp_path, BASE.replace("secret: {psk: lab-key}\n", "defaults: {auth: cert}\n"))
    hub = build_node_config(lab, lab.node("hub")).ike
    assert hub is not None and hub.auth == "cert" and hub.pki is not None
    assert {p.name: (p.auth, p.psk, p.cert_file) for p in hub.peers} == {
        "br1": ("cert", None, "/etc/vpnlab/pki/peers/br1.pem"), "br2": ("cert", None, "/etc/vpnlab/pki/peers/br2.pem")}

