"""RFC 5685 notify payloads: bytes as the RFC lays them out, and through the IKE codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnlab_agent.ike import redirect as r
from vpnlab_agent.ike.codec import Message, Notify, ParseError, decode, encode
from vpnlab_agent.ike.constants import ExchangeType, NotifyType


def test_redirect_supported_is_an_empty_status_notify() -> None:
    n = r.redirect_supported()
    assert (n.protocol, n.spi, n.notify_type, n.data) == (0, b"", 16406, b"")


def test_redirect_ipv4_with_nonce_bytes() -> None:
    nonce = bytes(range(32))
    n = r.redirect(r.Gateway.of("203.0.113.12"), nonce)
    assert n.notify_type == 16407
    assert n.data == b"\x01\x04" + bytes([203, 0, 113, 12]) + nonce
    assert r.parse_redirect(n) == (r.Gateway(r.GwIdentType.IPV4, "203.0.113.12"), nonce)


def test_redirect_ipv6_and_fqdn_without_nonce() -> None:
    n6 = r.redirect(r.Gateway.of("2001:db8::5"))
    assert n6.data[:2] == b"\x02\x10" and len(n6.data) == 18
    assert r.parse_redirect(n6) == (r.Gateway(r.GwIdentType.IPV6, "2001:db8::5"), b"")
    nf = r.redirect(r.Gateway.of("gw2.example"))
    assert nf.data == b"\x03\x0bgw2.example"
    gw, nonce = r.parse_redirect(nf)
    assert gw.kind == r.GwIdentType.FQDN and gw.value == "gw2.example" and nonce == b"" and not gw.is_address


def test_redirected_from() -> None:
    n = r.redirected_from(r.Gateway.of("203.0.113.2"))
    assert n.notify_type == 16408 and n.data == b"\x01\x04\xcb\x00\x71\x02"
    assert r.parse_redirected_from(n) == r.Gateway.of("203.0.113.2")
    with pytest.raises(ParseError):
        r.parse_redirected_from(Notify(0, b"", NotifyType.REDIRECTED_FROM, n.data + b"x"))


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x04\x01\x02", b"\x01\x05abcde", b"\x02\x04abcd",
                                  b"\x03\x00", b"\x09\x01a", b"\x03\x02\xff\xfe"])
def test_bad_gateway_identities(data: bytes) -> None:
    with pytest.raises(ParseError):
        r.parse_redirect(Notify(0, b"", NotifyType.REDIRECT, data))


@given(st.ip_addresses(v=4).map(str), st.binary(min_size=16, max_size=256))
def test_round_trip_through_the_ike_codec(addr: str, nonce: bytes) -> None:
    msg = Message(b"\x01" * 8, bytes(8), ExchangeType.IKE_SA_INIT, 0, False, True,
                  [r.redirect(r.Gateway.of(addr), nonce)])
    back = decode(encode(msg))
    n = r.find(back.payloads, NotifyType.REDIRECT)
    assert n is not None and r.parse_redirect(n) == (r.Gateway.of(addr), nonce)
    assert r.find(back.payloads, NotifyType.REDIRECTED_FROM) is None


def test_parse_refuses_other_notifies() -> None:
    with pytest.raises(ValueError):
        r.parse_redirect(r.redirect_supported())
