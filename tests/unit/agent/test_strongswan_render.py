"""swanctl.conf / strongswan.conf rendered from node configs, for both roles."""

from __future__ import annotations

import dataclasses
import re

import pytest

from vpnlab_agent.config import NodeConfig, PeerConfig
from vpnlab_agent.strongswan.proposals import ProposalError, esp_proposals, ike_proposals
from vpnlab_agent.strongswan.render import (
    RenderError,
    forwardable_ts,
    identity,
    render_strongswan_conf,
    render_swanctl,
)


def section(text: str, name: str) -> str:
    """The body of the first `name { ... }` block (brace-balanced)."""
    start = re.search(rf"(?m)^\s*{re.escape(name)} {{\n", text)
    assert start, f"no section {name!r} in:\n{text}"
    depth, i = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start.end(): i - 1]


def settings(body: str) -> dict[str, str]:
    """key = value lines directly in this block (not in nested ones)."""
    out, depth = {}, 0
    for line in body.splitlines():
        line = line.strip()
        if line.endswith("{"):
            depth += 1
        elif line == "}":
            depth -= 1
        elif depth == 0 and " = " in line:
            key, value = line.split(" = ", 1)
            out[key] = value
    return out


def test_branch_initiates_towards_the_hub(branch: NodeConfig) -> None:
    text = render_swanctl(branch)
    conn = section(text, "hub")
    assert settings(conn) == {
        "version": "2", "local_addrs": "198.51.100.11", "remote_addrs": "198.51.100.10", "encap": "yes",
        "mobike": "no", "proposals": "aes128gcm16-prfsha256-ecp256", "rekey_time": "6480s",
        "over_time": "720s", "dpd_delay": "15s", "fragmentation": "yes",
    }
    assert settings(section(conn, "local")) == {"auth": "psk", "id": "fqdn:br1"}
    assert settings(section(conn, "remote")) == {"auth": "psk", "id": "fqdn:hub"}
    child = section(section(conn, "children"), "hub")
    assert settings(child) == {
        "mode": "tunnel", "local_ts": "10.1.0.0/24", "remote_ts": "10.0.0.0/8",
        "esp_proposals": "aes128gcm16", "rekey_time": "1620s", "life_time": "1800s", "dpd_action": "restart",
        "start_action": "start", "close_action": "start",
    }
    secret = settings(section(section(text, "secrets"), "ike-hub"))
    assert secret["id-local"] == "fqdn:br1" and secret["id-remote"] == "fqdn:hub"
    # the PSK goes in hex: quotes and backslashes in it need no escaping
    assert bytes.fromhex(secret["secret"].removeprefix("0x")) == b'pa"ss\\word'
    assert 'pa"ss' not in text


def test_hub_answers_every_branch(hub: NodeConfig) -> None:
    text = render_swanctl(hub)
    conns = section(text, "connections")
    for name, remote_ts in (("br1", "10.1.0.0/24"), ("br2", "10.2.0.0/24,10.22.0.0/16")):
        conn = section(conns, name)
        top = settings(conn)
        assert top["remote_addrs"] == "%any" and top["local_addrs"] == "198.51.100.10"
        assert top["rekey_time"] == "12960s" and top["over_time"] == "1440s" and top["dpd_delay"] == "10s"
        assert settings(section(conn, "remote"))["id"] == f"fqdn:{name}"
        child = settings(section(section(conn, "children"), name))
        assert child["local_ts"] == "10.0.0.0/24" and child["remote_ts"] == remote_ts
        assert child["start_action"] == "none" and child["dpd_action"] == "clear"
        assert child["rekey_time"] == "3240s"
    secrets = section(text, "secrets")
    assert "ike-br1 {" in secrets and "ike-br2 {" in secrets


def test_fragmentation_settings(branch: NodeConfig) -> None:
    """RFC 7383 as the topology says: swanctl's per-connection switch and charon's fragment size."""
    assert settings(section(render_strongswan_conf(branch), "charon"))["fragment_size"] == "1280"
    assert branch.ike is not None
    off = dataclasses.replace(branch, ike=dataclasses.replace(branch.ike, fragmentation=False, fragment_size=900))
    assert settings(section(render_swanctl(off), "hub"))["fragmentation"] == "no"
    assert settings(section(render_strongswan_conf(off), "charon"))["fragment_size"] == "900"
    bad = dataclasses.replace(branch, ike=dataclasses.replace(branch.ike, fragment_size=100))
    with pytest.raises(RenderError, match="fragment_size must be an IP datagram size of 576 to 65535 bytes"):
        render_swanctl(bad)


def test_strongswan_conf_loads_libipsec_vici_and_logs_to_stdout(branch: NodeConfig) -> None:
    text = render_strongswan_conf(branch, vici_socket="/run/x/charon.vici")
    charon = section(text, "charon")
    top = settings(charon)
    assert top["install_routes"] == "yes" and top["load_modular"] == "no"
    assert top["keep_alive"] == f"{branch.ike.nat_keepalive_s}s"  # type: ignore[union-attr]
    plugins = top["load"].split()
    for needed in ("openssl", "gcm", "gmp", "curve25519", "kdf", "kernel-netlink", "socket-default", "vici"):
        assert needed in plugins
    # libipsec before kernel-netlink: the first IPsec backend loaded wins
    assert plugins.index("kernel-libipsec") < plugins.index("kernel-netlink")
    assert not {"ha", "farp", "forecast", "stroke"} & set(plugins)
    assert settings(section(section(charon, "plugins"), "vici"))["socket"] == "unix:///run/x/charon.vici"
    log = settings(section(section(charon, "filelog"), "agent"))
    assert log["path"] == "/dev/stdout" and log["flush_line"] == "yes" and log["default"] == "1"
    assert settings(section(section(text, "charon-systemd"), "journal"))["default"] == "-1"
    assert settings(section(text, "swanctl"))["socket"] == "unix:///run/x/charon.vici"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("aes128gcm16-prfsha256-ecp256",), "aes128gcm16-prfsha256-ecp256"),
        (("aes256gcm16-prfsha384-x25519", "aes128-sha256-dh14"),
         "aes256gcm16-prfsha384-curve25519,aes128-sha256-modp2048"),
        (("AES128GCM-PRFSHA256-DH19",), "aes128gcm16-prfsha256-ecp256"),
    ],
)
def test_ike_proposal_mapping(given: tuple[str, ...], expected: str) -> None:
    assert ike_proposals(given) == expected


def test_esp_proposal_mapping() -> None:
    assert esp_proposals(("aes128gcm16", "aes256-sha256", "aes128gcm16-ecp256")) == (
        "aes128gcm16,aes256-sha256,aes128gcm16-ecp256"
    )


@pytest.mark.parametrize(
    ("ike", "message"),
    [
        (("aes128gcm16-prfsha256-ecp999",), "unsupported algorithm 'ecp999'"),
        (("prfsha256-ecp256",), "no encryption"),
        (("aes128-prfsha256-ecp256",), "needs an integrity"),
        (("aes128gcm16-ecp256",), "needs a PRF"),
        (("aes128gcm16-prfsha256",), "needs a DH group"),
        ((), "no IKE proposals"),
    ],
)
def test_bad_ike_proposals(ike: tuple[str, ...], message: str) -> None:
    with pytest.raises(ProposalError, match=message):
        ike_proposals(ike)


def test_esp_proposal_has_no_prf() -> None:
    with pytest.raises(ProposalError, match="unsupported algorithm 'prfsha256'"):
        esp_proposals(("aes128gcm16-prfsha256",))


def _ike(cfg: NodeConfig, **changes: object) -> NodeConfig:
    assert cfg.ike is not None
    return dataclasses.replace(cfg, ike=dataclasses.replace(cfg.ike, **changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"psk": ""}, "empty PSK"),
        ({"ike_proposals": ("aes128gcm16-prfsha256-ecp1",)}, "unsupported algorithm"),
        ({"child_lifetime_s": 0}, "child_lifetime_s must be a positive"),
        ({"local_id": "hub; rm -rf"}, "not an IP address or a host name"),
        ({"peers": (PeerConfig("hub", "hub", None, True, ("10.1.0.0/24",), ("10.0.0.0/24",)),)},
         "initiate needs the peer's address"),
        ({"peers": (PeerConfig("hub x", "hub", "198.51.100.10", True, ("10.1.0.0/24",), ("10.0.0.0/24",)),)},
         "not usable as a connection name"),
        ({"peers": (PeerConfig("hub", "hub", "198.51.100.10", True, ("10.1.0.0/24",), ()),)},
         "needs local and remote traffic selectors"),
        ({"peers": (PeerConfig("hub", "hub", "198.51.100.10", True, ("10.1.0.0/24",), ("10.0.0/33",)),)},
         "is not a CIDR"),
        ({"peers": (PeerConfig("hub", "hub", "198.51.100.10", True, (), ("10.0.0.0/24",)),) * 2},
         "listed twice"),
    ],
)
def test_bad_configs_fail_at_render_time(branch: NodeConfig, changes: dict, message: str) -> None:
    with pytest.raises(RenderError, match=message) as info:
        render_swanctl(_ike(branch, **changes))
    assert "\n" not in str(info.value)


def test_no_ike_section(branch: NodeConfig) -> None:
    with pytest.raises(RenderError, match="needs an ike section"):
        render_swanctl(dataclasses.replace(branch, ike=None))


def test_identity_forms() -> None:
    assert identity("198.51.100.10") == "198.51.100.10"
    assert identity("br1.example") == "fqdn:br1.example"


def test_local_address_falls_back_to_wan0_then_any(branch: NodeConfig) -> None:
    no_public = dataclasses.replace(branch, public_address=None)
    assert settings(section(render_swanctl(no_public), "hub"))["local_addrs"] == "198.51.100.11"
    no_wan = dataclasses.replace(no_public, interfaces=branch.interfaces[1:])
    assert settings(section(render_swanctl(no_wan), "hub"))["local_addrs"] == "%any"


def test_certificates_per_peer_keys_and_margin(hub: NodeConfig) -> None:
    from vpnlab_agent.config import PkiConfig

    assert hub.ike is not None
    br1, br2 = hub.ike.peers
    cfg = _ike(hub, auth="cert", pki=PkiConfig(), rekey_margin_s=600, peers=(
        dataclasses.replace(br1, auth="cert", cert_file="/etc/vpnlab/pki/peers/br1.pem"),
        dataclasses.replace(br2, psk="br2-own"),
    ))
    text = render_swanctl(cfg)
    one = section(section(text, "connections"), "br1")
    assert settings(one)["rekey_time"] == "13800s" and settings(one)["over_time"] == "600s"
    assert settings(section(one, "local")) == {"auth": "pubkey", "id": "fqdn:hub", "certs": "/etc/vpnlab/pki/cert.pem"}
    assert settings(section(one, "remote")) == {"auth": "pubkey", "id": "fqdn:br1", "certs": "/etc/vpnlab/pki/peers/br1.pem",
                                                "cacerts": "/etc/vpnlab/pki/ca.pem"}
    two = section(section(text, "connections"), "br2")
    assert settings(section(two, "local"))["auth"] == "pubkey" and settings(section(two, "remote"))["auth"] == "psk"
    secrets = section(text, "secrets")
    assert "ike-br1" not in secrets  # certificates only: no PSK for that tunnel
    assert bytes.fromhex(settings(section(secrets, "ike-br2"))["secret"][2:]) == b"br2-own"
    with pytest.raises(RenderError, match="needs the peer's certificate"):
        render_swanctl(_ike(cfg, peers=(dataclasses.replace(br1, auth="cert"),)))
    with pytest.raises(RenderError, match="needs the pki files"):
        render_swanctl(_ike(cfg, pki=None))


def test_a_clusters_client_gives_up_on_a_silent_member_within_seconds(branch: NodeConfig) -> None:
    import dataclasses

    assert settings(section(render_strongswan_conf(branch), "charon"))["retransmit_tries"] == "5"
    fast = dataclasses.replace(branch, extensions={**branch.extensions, "redirect": {"peers": {"lb": "203.0.113.2"}}})
    top = settings(section(render_strongswan_conf(fast), "charon"))
    assert (top["retransmit_tries"], top["retransmit_timeout"], top["retransmit_limit"]) == ("3", "1.0", "2.0")


def test_libipsec_leaves_out_local_selectors_without_an_address_of_ours(hub: NodeConfig) -> None:
    """strongSwan 5.9.8's kernel-libipsec fails a child SA whose local selector holds none of our
    addresses (strongSwan #1766): a hub offers each branch its own LANs only, not the other branches'."""
    def local_ts(text: str, conn: str) -> str:
        return settings(section(section(section(section(text, "connections"), conn), "children"), conn))["local_ts"]

    assert hub.ike is not None
    peers = tuple(dataclasses.replace(p, local_ts=("10.0.0.0/24", "10.2.0.0/24", "10.22.0.0/16") if p.name == "br1"
                                      else ("10.0.0.0/24", "10.1.0.0/24")) for p in hub.ike.peers)
    star = dataclasses.replace(hub, ike=dataclasses.replace(hub.ike, peers=peers))
    assert local_ts(render_swanctl(star, libipsec=True), "br1") == "10.0.0.0/24"
    assert local_ts(render_swanctl(star, libipsec=True), "br2") == "10.0.0.0/24"
    # the kernel's XFRM installs such policies: every selector stays
    assert local_ts(render_swanctl(star), "br1") == "10.0.0.0/24,10.2.0.0/24,10.22.0.0/16"
    # a selector list without any of our addresses stays as it is (and charon says why it fails)
    assert forwardable_ts(star, ("10.9.0.0/24",)) == (("10.9.0.0/24",), ())
