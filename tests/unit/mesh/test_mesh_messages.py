from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnlab_agent.mesh import messages as m
from vpnlab_agent.mesh.messages import MeshNotify, RefuseReason


@pytest.mark.parametrize("notify,msg", [
    (MeshNotify.REQUEST, m.MeshRequest(7, "br2", "198.51.100.12", ("10.2.0.0/24",), ("10.1.0.0/24",))),
    (MeshNotify.REQUEST, m.MeshRequest(7, "br4", None, ("10.4.0.0/24",), ("10.1.0.0/24", "10.9.0.0/16"))),
    (MeshNotify.RELAY, m.MeshRequest(0xFFFFFFFF, "br2", "198.51.100.12", ("10.2.0.0/24",), ("10.1.0.0/24",), "br1")),
    (MeshNotify.ACK, m.MeshAck(9, "br2", "br1", ("10.1.0.0/24",))),
    (MeshNotify.REFUSE, m.MeshRefusal(9, "br2", "br1", RefuseReason.LIMIT_REACHED)),
    (MeshNotify.REFUSE, m.MeshRefusal(9, "br2", "", RefuseReason.UNKNOWN_SUBNET)),
    (MeshNotify.RELAY, m.MeshRequest(3, "br4", None, ("10.4.0.0/24",), ("10.1.0.0/24",), "br1",
                                     m.NatFlag.BEHIND_NAT | m.NatFlag.PUNCH, ("198.51.100.40", 4500))),
    (MeshNotify.ACK, m.MeshAck(9, "br2", "br1", ("10.1.0.0/24",), ("198.51.100.41", 4501))),
    (MeshNotify.REFUSE, m.MeshRefusal(9, "br2", "br1", RefuseReason.REQUESTER_SYMMETRIC)),
    (MeshNotify.MAPPING, m.MeshMapping(0, ("198.51.100.40", 61234))),
])
def test_round_trip(notify: MeshNotify, msg: m.MeshMessage) -> None:
    assert m.decode(notify, m.encode(msg)) == msg


def test_no_public_address_is_all_zero() -> None:
    body = m.encode(m.MeshRequest(1, "b", None, ("10.2.0.0/24",), ("10.1.0.0/24",)))
    assert b"\x00\x00\x00\x00" in body[6:]


@pytest.mark.parametrize("body,why", [
    (b"", "truncated"),
    (b"\x01\x00\x00\x00\x01", "version"),
    (m.encode(m.MeshAck(1, "a", "b", ("10.1.0.0/24",))) + b"x", "trailing"),
    (m.encode(m.MeshAck(1, "a", "b", ("10.1.0.0/24",)))[:-1], "truncated"),
    (b"\x02\x00\x00\x00\x01\x01a\x01b\x01\x0a\x01\x00\x01\x18", "host bits"),
    (b"\x02\x00\x00\x00\x01\x01a\x01b\x00", "subnets"),
    (b"\x02\x00\x00\x00\x01\x01a\x01b\x01\x0a\x01\x00\x00\x21", "prefix"),
    (b"\x02\x00\x00\x00\x01\x02a;\x01b\x01\x0a\x01\x00\x00\x18", "characters"),
])
def test_malformed_ack_bodies_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(m.MeshMessageError, match=why):
        m.decode(MeshNotify.ACK, body)


def test_half_a_mapping_is_refused_and_an_empty_one_is_a_query() -> None:
    body = bytearray(m.encode(m.MeshMapping(0, ("198.51.100.40", 4500))))
    body[-2:] = b"\x00\x00"
    with pytest.raises(m.MeshMessageError, match="half a mapping"):
        m.decode(MeshNotify.MAPPING, bytes(body))
    assert m.decode(MeshNotify.MAPPING, b"\x02\x00\x00\x00\x00" + bytes(6)) == m.MeshMapping(0, None)  # a query


def test_unknown_reason_and_foreign_notify_type() -> None:
    body = bytearray(m.encode(m.MeshRefusal(1, "a", "b", RefuseReason.INVALID)))
    body[-1] = 200
    with pytest.raises(m.MeshMessageError, match="reason"):
        m.decode(MeshNotify.REFUSE, bytes(body))
    with pytest.raises(m.MeshMessageError, match="not a mesh notify"):
        m.decode(40960, b"")


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(m.MeshMessageError):
        m.encode(m.MeshAck(1, "a", "b", tuple(f"10.{i}.0.0/24" for i in range(17))))
    with pytest.raises(m.MeshMessageError):
        m.encode(m.MeshAck(1, "", "b", ("10.0.0.0/8",)))


@given(st.sampled_from(list(MeshNotify)), st.binary(max_size=200))
def test_decode_never_raises_anything_else(notify: MeshNotify, data: bytes) -> None:
    try:
        m.decode(notify, data)
    except m.MeshMessageError:
        pass
