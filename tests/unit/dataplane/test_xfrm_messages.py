"""XFRM netlink messages are laid out as linux/xfrm.h says; the engine maps SAs to them correctly."""

from __future__ import annotations

import socket
import struct

import pytest

from vpnlab_agent.dataplane import probe
from vpnlab_agent.dataplane import xfrm_netlink as nl
from vpnlab_agent.dataplane.base import EngineError
from vpnlab_agent.dataplane.xfrm import policy_priority, policy_specs, state_specs
from vpnlab_agent.sa import ChildSA, EspAlgorithm


def _sa(alg: EspAlgorithm, enc: int, integ: int = 0) -> ChildSA:
    return ChildSA(
        name="peer", reqid=7, spi_in=0xA1, spi_out=0xB2, algorithm=alg,
        enc_key_in=b"\x01" * enc, enc_key_out=b"\x02" * enc, integ_key_in=b"\x03" * integ,
        integ_key_out=b"\x04" * integ, local_addr="192.0.2.1", remote_addr="192.0.2.2",
        local_port=4500, remote_port=4501, local_ts=("10.1.0.0/24", "10.3.0.0/16"), remote_ts=("10.2.0.0/24",),
        soft_lifetime_bytes=1000, hard_lifetime_bytes=2000,
    )  # fmt: skip


def _attrs(data: bytes) -> dict[int, bytes]:
    out, off = {}, 0
    while off < len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out[kind] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def test_usersa_info_fields_land_where_the_kernel_reads_them() -> None:
    inbound, outbound = state_specs(_sa(EspAlgorithm("aes-gcm-16", 128), 20))
    payload = nl.newsa_payload(inbound)
    info, attrs = payload[:224], _attrs(payload[224:])
    assert info[56:60] == socket.inet_aton("192.0.2.1")  # id.daddr: inbound lands on us
    assert struct.unpack_from("!I", info, 72)[0] == 0xA1  # id.spi, network order
    assert info[76] == 50  # id.proto ESP
    assert info[80:84] == socket.inet_aton("192.0.2.2")  # saddr
    assert struct.unpack_from("=QQ", info, 96) == (1000, 2000)  # soft/hard byte limits
    assert struct.unpack_from("=IHBB", info, 208) == (7, socket.AF_INET, nl.XFRM_MODE_TUNNEL, 32)
    name, key_bits, icv = struct.unpack_from("=64sII", attrs[nl.XFRMA_ALG_AEAD])
    assert name.rstrip(b"\0") == b"rfc4106(gcm(aes))" and key_bits == 160 and icv == 128
    assert attrs[nl.XFRMA_ALG_AEAD][72:] == b"\x01" * 20  # the inbound key (with salt)
    encap = attrs[nl.XFRMA_ENCAP]
    etype, (sport, dport) = struct.unpack_from("=H", encap)[0], struct.unpack_from("!HH", encap, 2)
    assert (etype, sport, dport) == (nl.UDP_ENCAP_ESPINUDP, 4501, 4500)  # from the peer's port to ours
    assert outbound.replay_window == 0 and outbound.encap == (4500, 4501) and outbound.spi == 0xB2


def test_cbc_hmac_state_has_both_algorithms() -> None:
    inbound, _ = state_specs(_sa(EspAlgorithm("aes-cbc", 256, "hmac-sha256-128"), 32, 32))
    attrs = _attrs(nl.newsa_payload(inbound)[224:])
    name, bits = struct.unpack_from("=64sI", attrs[nl.XFRMA_ALG_CRYPT])
    assert name.rstrip(b"\0") == b"cbc(aes)" and bits == 256
    name, bits, trunc = struct.unpack_from("=64sII", attrs[nl.XFRMA_ALG_AUTH_TRUNC])
    assert name.rstrip(b"\0") == b"hmac(sha256)" and bits == 256 and trunc == 128
    assert nl.XFRMA_ALG_AEAD not in attrs


@pytest.mark.parametrize(
    "alg,enc,integ",
    [(EspAlgorithm("aes-gcm-16", 128), 16, 0), (EspAlgorithm("aes-cbc", 128, "hmac-sha256-128"), 16, 20),
     (EspAlgorithm("chacha20", 256), 36, 0)],
)  # fmt: skip
def test_bad_keys_and_unknown_algorithms_are_refused(alg: EspAlgorithm, enc: int, integ: int) -> None:
    with pytest.raises(EngineError, match="SA peer"):
        state_specs(_sa(alg, enc, integ))


def test_policies_cover_every_selector_pair_in_three_directions() -> None:
    specs = policy_specs(_sa(EspAlgorithm("aes-gcm-16", 128), 20))
    assert len(specs) == 2 * 1 * 3
    out = [p for p in specs if p.direction == nl.XFRM_POLICY_OUT]
    assert {(p.src_cidr, p.dst_cidr) for p in out} == {("10.1.0.0/24", "10.2.0.0/24"), ("10.3.0.0/16", "10.2.0.0/24")}
    assert all((p.tmpl_src, p.tmpl_dst, p.reqid) == ("192.0.2.1", "192.0.2.2", 7) for p in out)
    inbound = [p for p in specs if p.direction != nl.XFRM_POLICY_OUT]
    assert all((p.tmpl_src, p.tmpl_dst) == ("192.0.2.2", "192.0.2.1") for p in inbound)
    # the more specific pair gets the better (lower) priority
    prio = {p.src_cidr: p.priority for p in out}
    assert prio["10.1.0.0/24"] < prio["10.3.0.0/16"]


def test_policy_payload_layout() -> None:
    spec = nl.PolicySpec("10.1.0.0/24", "10.2.0.0/24", nl.XFRM_POLICY_OUT, "192.0.2.1", "192.0.2.2", 7, 1952)
    data = nl.policy_payload(spec)
    sel = data[:56]
    assert sel[0:4] == socket.inet_aton("10.2.0.0") and sel[16:20] == socket.inet_aton("10.1.0.0")
    assert struct.unpack_from("=HBB", sel, 40) == (socket.AF_INET, 24, 24)
    assert struct.unpack_from("=IIBB", data, 152) == (1952, 0, nl.XFRM_POLICY_OUT, nl.XFRM_POLICY_ALLOW)
    tmpl = _attrs(data[168:])[nl.XFRMA_TMPL]
    assert len(tmpl) == 64 and tmpl[0:4] == socket.inet_aton("192.0.2.2") and tmpl[20] == 50
    assert tmpl[28:32] == socket.inet_aton("192.0.2.1") and struct.unpack_from("=I", tmpl, 44)[0] == 7


def test_expire_message_parsed() -> None:
    inbound, _ = state_specs(_sa(EspAlgorithm("aes-gcm-16", 128), 20))
    info = nl.newsa_payload(inbound)[:224]
    assert nl.parse_expire(info + b"\x01" + b"\0" * 7) == ("192.0.2.1", 0xA1, True)
    assert nl.parse_expire(info + b"\x00" + b"\0" * 7)[2] is False


def test_unknown_data_plane_preference_is_refused() -> None:
    with pytest.raises(EngineError, match="unknown data plane 'kernel'"):
        probe.select_engine("kernel")


def test_kernel_error_counters_keep_only_nonzero(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vpnlab_agent.dataplane.xfrm import kernel_xfrm_errors

    stat = tmp_path / "xfrm_stat"
    stat.write_text("XfrmInError             \t0\nXfrmInNoStates          \t3\nXfrmOutPolBlock\t1\n")
    assert kernel_xfrm_errors(str(stat)) == {"XfrmInNoStates": 3, "XfrmOutPolBlock": 1}
    assert kernel_xfrm_errors(str(tmp_path / "missing")) == {}


def test_marks_go_on_states_policies_and_lookups() -> None:
    inbound, _ = state_specs(_sa(EspAlgorithm("aes-gcm-16", 128), 20), mark=(0x10, 0xFF))
    assert struct.unpack("=II", _attrs(nl.newsa_payload(inbound)[224:])[nl.XFRMA_MARK]) == (0x10, 0xFF)
    pol = policy_specs(_sa(EspAlgorithm("aes-gcm-16", 128), 20), mark=(0x10, 0xFF))[0]
    assert struct.unpack("=II", _attrs(nl.policy_payload(pol)[168:])[nl.XFRMA_MARK]) == (0x10, 0xFF)
    assert _attrs(nl.sa_id_payload("192.0.2.1", 1, (0x10, 0xFF))[24:])[nl.XFRMA_MARK] == struct.pack("=II", 16, 255)
    assert len(nl.sa_id_payload("192.0.2.1", 1)) == 24  # no mark: no attribute
    assert nl.XFRMA_MARK in _attrs(nl.policy_id_payload("10.1.0.0/24", "10.2.0.0/24", 1, (1, 1))[64:])


def test_policy_priority_ranks_prefix_length_then_preference() -> None:
    # lower wins: a longer prefix beats any preference; among equal selectors the preference decides
    assert policy_priority("10.1.0.0/24", "10.2.0.0/25") < policy_priority("10.1.0.0/24", "10.2.0.0/24", 10**6)
    assert policy_priority("10.1.0.0/24", "10.2.0.0/24", 10) < policy_priority("10.1.0.0/24", "10.2.0.0/24", 0)
    assert policy_priority("10.1.0.0/24", "10.2.0.0/24", -5) > policy_priority("10.1.0.0/24", "10.2.0.0/24", 0)
    assert 0 < policy_priority("0.0.0.0/0", "0.0.0.0/0", -(10**6)) < 2**32
    assert 0 < policy_priority("10.0.0.1/32", "10.0.0.2/32", 10**6)


def test_sa_mark_and_if_id_go_on_its_states_and_policies() -> None:
    import dataclasses

    sa = dataclasses.replace(_sa(EspAlgorithm("aes-gcm-16", 128), 20), mark=0x42, if_id=9, preference=3)
    engine_default = (0x100, 0xF00)
    for spec in state_specs(sa, engine_default):
        attrs = _attrs(nl.newsa_payload(spec)[224:])
        assert struct.unpack("=II", attrs[nl.XFRMA_MARK]) == (0x42, 0xFFFFFFFF)
        assert struct.unpack("=I", attrs[nl.XFRMA_IF_ID]) == (9,)
    pols = policy_specs(sa, engine_default)
    for pol in pols:
        assert (pol.mark, pol.if_id) == ((0x42, 0xFFFFFFFF), 9)
        attrs = _attrs(nl.policy_payload(pol)[168:])
        assert nl.XFRMA_IF_ID in attrs and nl.XFRMA_MARK in attrs
    # the id a policy is deleted by carries mark and if_id too (the kernel looks them up with both)
    pid = _attrs(nl.policy_id_payload("10.1.0.0/24", "10.2.0.0/24", nl.XFRM_POLICY_OUT, (0x42, 0xFFFFFFFF), 9)[64:])
    assert struct.unpack("=I", pid[nl.XFRMA_IF_ID]) == (9,)
    # a plain SA takes the engine's mark and has no if_id
    plain = _sa(EspAlgorithm("aes-gcm-16", 128), 20)
    attrs = _attrs(nl.newsa_payload(state_specs(plain, engine_default)[0])[224:])
    assert struct.unpack("=II", attrs[nl.XFRMA_MARK]) == engine_default and nl.XFRMA_IF_ID not in attrs
    assert {p.key for p in policy_specs(plain)} & {p.key for p in pols} == set()  # other mark/if_id: other policies


def test_a_context_sa_matches_its_mark_outbound_and_marks_what_it_decrypts() -> None:
    """per-network on XFRM (docs/hsvpn.md): ESP of every context arrives unmarked on one socket, so
    the inbound state is found by SPI alone and sets the context's mark on the decrypted packet;
    the outbound state and the policies match the context's mark, and the outer packet leaves
    unmarked (routed in main, not in the context)."""
    import dataclasses

    sa = dataclasses.replace(_sa(EspAlgorithm("aes-gcm-16", 128), 20), context="guest", mark=103)
    inbound, outbound = state_specs(sa, (0x100, 0xF00), context_mark=103)
    a_in, a_out = _attrs(nl.newsa_payload(inbound)[224:]), _attrs(nl.newsa_payload(outbound)[224:])
    assert nl.XFRMA_MARK not in a_in and nl.XFRMA_IF_ID not in a_in
    assert struct.unpack("=I", a_in[nl.XFRMA_SET_MARK]) == (103,)
    assert struct.unpack("=I", a_in[nl.XFRMA_SET_MARK_MASK]) == (0xFFFFFFFF,)
    assert struct.unpack("=II", a_out[nl.XFRMA_MARK]) == (103, 0xFFFFFFFF)
    assert struct.unpack("=I", a_out[nl.XFRMA_SET_MARK]) == (0,)
    assert struct.unpack("=I", a_out[nl.XFRMA_SET_MARK_MASK]) == (0xFFFFFFFF,)
    pols = policy_specs(sa, (0x100, 0xF00), context_mark=103)
    assert len(pols) == 6 and all((p.mark, p.if_id) == ((103, 0xFFFFFFFF), 0) for p in pols)
    # two contexts with identical selectors: distinct policies, told apart by the mark alone
    corp = policy_specs(dataclasses.replace(sa, context="corp"), context_mark=101)
    assert {p.key for p in corp} & {p.key for p in pols} == set()
    assert [p.key[:3] for p in corp] == [p.key[:3] for p in pols]
    # a plain SA has no set-mark attribute
    assert nl.XFRMA_SET_MARK not in _attrs(nl.newsa_payload(state_specs(_sa(EspAlgorithm("aes-gcm-16", 128), 20))[0])[224:])


def test_policies_of_equal_selectors_share_a_key_whatever_the_preference() -> None:
    import dataclasses

    a = _sa(EspAlgorithm("aes-gcm-16", 128), 20)
    b = dataclasses.replace(a, reqid=8, preference=10, remote_addr="192.0.2.3")
    assert [p.key for p in policy_specs(a)] == [p.key for p in policy_specs(b)]


def test_xfrm_engine_refuses_what_only_the_userspace_engine_can_do() -> None:
    import dataclasses

    from vpnlab_agent.dataplane.xfrm import XfrmEngine
    from vpnlab_agent.esp.trailer import Rfc4303Trailer

    class Tagged(Rfc4303Trailer):
        kind = "test-tagged"

    sa = _sa(EspAlgorithm("aes-gcm-16", 128), 20)
    with pytest.raises(EngineError, match="trailer 'test-tagged' needs the userspace engine"):
        XfrmEngine().install(dataclasses.replace(sa, trailer=Tagged()))
    with pytest.raises(EngineError, match="routing context 'voice' is not one of this engine's"):
        XfrmEngine().install(dataclasses.replace(sa, context="voice"))
