"""ike.policy: identities, selector narrowing, suite names."""

from __future__ import annotations

import pytest

from vpnlab_agent.ike.codec import TrafficSelector, ts_from_cidr
from vpnlab_agent.ike.constants import IdType
from vpnlab_agent.ike.proposals import esp_proposals_from_config, ike_proposals_from_config
from vpnlab_agent.ike.policy import describe, identity, identity_text, narrow, within


@pytest.mark.parametrize(("text", "id_type", "data", "shown"), [
    ("hub", IdType.FQDN, b"hub", "hub"),
    ("@hub.example", IdType.FQDN, b"hub.example", "hub.example"),
    ("192.0.2.7", IdType.IPV4_ADDR, bytes([192, 0, 2, 7]), "192.0.2.7"),
    ("keyid:branch-1", IdType.KEY_ID, b"branch-1", "keyid:branch-1"),
    ("@#c0ffee", IdType.KEY_ID, b"\xc0\xff\xee", None),
])
def test_identity(text: str, id_type: int, data: bytes, shown: str | None) -> None:
    assert identity(text) == (id_type, data)
    if shown is not None:
        assert identity_text(id_type, data) == shown


def test_bad_key_id_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'@#' must be followed by hex digits"):
        identity("@#nothex")


def test_narrow_keeps_only_the_intersection() -> None:
    offered = [ts_from_cidr("10.0.0.0/16"), ts_from_cidr("10.9.0.0/24")]
    assert narrow(offered, ("10.0.5.0/24", "10.9.0.128/25")) == [
        TrafficSelector("10.0.5.0", "10.0.5.255"),
        TrafficSelector("10.9.0.128", "10.9.0.255"),
    ]
    assert narrow(offered, ("172.16.0.0/12",)) == []
    assert narrow([ts_from_cidr("10.1.2.0/24")], ("0.0.0.0/0",)) == [ts_from_cidr("10.1.2.0/24")]


@pytest.mark.parametrize("ts", [TrafficSelector("10.9.0.0", "10.9.0.255", 6),
                                TrafficSelector("10.9.0.0", "10.9.0.255", 0, 80, 80)])
def test_narrow_leaves_out_protocol_or_port_limited_selectors(ts: TrafficSelector) -> None:
    # Our SAs match addresses only: taking TCP/80 would carry and admit every protocol of 10.9.0.0/24.
    assert narrow([ts, ts_from_cidr("10.0.0.0/16")], ("10.0.0.0/8",)) == [ts_from_cidr("10.0.0.0/16")]
    assert not within([ts], [ts_from_cidr("10.9.0.0/24")])  # nor from a responder that narrowed so


def test_describe_gives_strongswan_style_names() -> None:
    for text in ("aes128gcm16-prfsha256-ecp256", "aes256gcm16-prfsha384-curve25519", "aes128-sha256-prfsha256-modp2048"):
        assert describe(ike_proposals_from_config([text])[0]) == text
    assert describe(esp_proposals_from_config(["aes256-sha256"])[0]) == "aes256-sha256"
