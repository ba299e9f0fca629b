"""Two IkeEndpoints wired in memory: handshakes, suites, identities, traffic selectors, rekeys, DELETE."""

from __future__ import annotations

import pytest

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.codec import decode_header
from vpnlab_agent.ike.constants import ExchangeType
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import AuthFailed, ChildSADeleted, ChildSAUp, IkeSADown, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

A, B = "198.51.100.1", "198.51.100.2"
LAN_A, LAN_B = ("10.1.0.0/24",), ("10.2.0.0/24",)


def pair(
    *,
    ike: tuple[str, ...] = ("aes128gcm16-prfsha256-ecp256",),
    esp: tuple[str, ...] = ("aes128gcm16",),
    ike_b: tuple[str, ...] | None = None,
    esp_b: tuple[str, ...] | None = None,
    id_a: str = "a.example",
    id_b: str = "b.example",
    psk_b: str = "s3cret",
    b_local_ts: tuple[str, ...] = LAN_B,
    b_remote_ts: tuple[str, ...] = LAN_A,
    force_encap: bool = True,
    **kw: object,
) -> tuple[IkeEndpoint, IkeEndpoint, Loopback]:
    """A (initiator, "branch") and B (responder, "hub"), each configured with the other as peer."""
    ca = IkeConfig(local_id=id_a, psk="s3cret", ike_proposals=ike, esp_proposals=esp,
                   peers=(PeerConfig("b", id_b, B, True, LAN_A, LAN_B),), **kw)  # type: ignore[arg-type]
    cb = IkeConfig(local_id=id_b, psk=psk_b, ike_proposals=ike_b or ike, esp_proposals=esp_b or esp,
                   peers=(PeerConfig("a", id_a, None, False, b_local_ts, b_remote_ts),), **kw)  # type: ignore[arg-type]
    ea = IkeEndpoint(ca, A, force_encap=force_encap)
    eb = IkeEndpoint(cb, B, force_encap=False)
    return ea, eb, Loopback(ea, eb)


def up(ea: IkeEndpoint, lb: Loopback, until: float = 1.0) -> tuple[list, list]:
    ea.connect("b", lb.now)
    lb.run(until)
    return lb.take_events(A), lb.take_events(B)


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def assert_child_pair(ca: ChildSAUp, cb: ChildSAUp) -> None:
    a, b = ca.child, cb.child
    assert a.spi_in == b.spi_out and a.spi_out == b.spi_in
    assert a.enc_key_in == b.enc_key_out and a.enc_key_out == b.enc_key_in
    assert a.integ_key_in == b.integ_key_out and a.integ_key_out == b.integ_key_in
    assert a.enc_key_in != a.enc_key_out
    assert a.algorithm == b.algorithm
    assert a.spi_in > 255 and a.spi_out > 255


@pytest.mark.parametrize(
    ("ike", "esp", "cipher", "key_bits", "integ"),
    [
        ("aes128gcm16-prfsha256-ecp256", "aes128gcm16", "aes-gcm-16", 128, None),
        ("aes128gcm16-prfsha256-modp2048", "aes256gcm16", "aes-gcm-16", 256, None),
        ("aes256gcm16-prfsha384-curve25519", "aes256gcm16", "aes-gcm-16", 256, None),
        ("aes256gcm16-prfsha256-ecp256", "aes128-sha256", "aes-cbc", 128, "hmac-sha256-128"),
        ("aes128-sha256-modp2048", "aes256-sha256", "aes-cbc", 256, "hmac-sha256-128"),
        ("aes256-sha256-prfsha384-curve25519", "aes128gcm16", "aes-gcm-16", 128, None),
    ],
)
def test_handshake_every_suite(ike: str, esp: str, cipher: str, key_bits: int, integ: str | None) -> None:
    ea, eb, lb = pair(ike=(ike,), esp=(esp,))
    eva, evb = up(ea, lb)
    (sa_a,), (sa_b,) = of(eva, IkeSAUp), of(evb, IkeSAUp)
    assert sa_a.initiator and not sa_b.initiator
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert sa_a.suite_desc == sa_b.suite_desc
    (ca,), (cb,) = of(eva, ChildSAUp), of(evb, ChildSAUp)
    assert_child_pair(ca, cb)
    alg = ca.child.algorithm
    assert (alg.cipher, alg.key_bits, alg.integ) == (cipher, key_bits, integ)
    salt = 4 if cipher == "aes-gcm-16" else 0
    assert len(ca.child.enc_key_in) == key_bits // 8 + salt
    assert len(ca.child.integ_key_in) == (32 if integ else 0)
    assert ca.child.local_ts == LAN_A and ca.child.remote_ts == LAN_B
    assert cb.child.local_ts == LAN_B and cb.child.remote_ts == LAN_A
    assert ea.internal_errors == eb.internal_errors == 0


@pytest.mark.parametrize(("id_a", "id_b"), [("a.example", "b.example"), ("192.0.2.7", "203.0.113.9"),
                                            ("keyid:branch-a", "@#c0ffee")])
def test_identity_types(id_a: str, id_b: str) -> None:
    ea, eb, lb = pair(id_a=id_a, id_b=id_b)
    eva, evb = up(ea, lb)
    assert len(of(eva, IkeSAUp)) == 1 and len(of(evb, IkeSAUp)) == 1
    assert of(evb, IkeSAUp)[0].peer == "a"


def test_initiator_proposal_list_responder_picks_first_acceptable() -> None:
    ea, eb, lb = pair(ike=("aes256gcm16-prfsha384-curve25519", "aes128gcm16-prfsha256-curve25519"),
                      ike_b=("aes128gcm16-prfsha256-curve25519",),
                      esp=("aes256gcm16", "aes128-sha256"), esp_b=("aes128-sha256",))
    eva, evb = up(ea, lb)
    assert of(eva, IkeSAUp)[0].suite_desc == "aes128gcm16-prfsha256-curve25519"
    assert of(eva, ChildSAUp)[0].child.algorithm.cipher == "aes-cbc"


def test_no_common_ike_proposal_fails_cleanly() -> None:
    ea, eb, lb = pair(ike=("aes128gcm16-prfsha256-ecp256",), ike_b=("aes256-sha256-modp2048",))
    eva, evb = up(ea, lb)
    (down,) = of(eva, IkeSADown)
    assert "NO_PROPOSAL_CHOSEN" in down.reason
    assert evb == [] and eb.status(lb.now)["ike_sas"] == []


def test_traffic_selectors_narrowed_by_responder() -> None:
    # B only allows half of A's LAN and a /25 of its own: the child carries the intersection.
    ea, eb, lb = pair(b_local_ts=("10.2.0.128/25",), b_remote_ts=("10.1.0.0/25", "172.16.0.0/16"))
    eva, evb = up(ea, lb)
    (ca,), (cb,) = of(eva, ChildSAUp), of(evb, ChildSAUp)
    assert ca.child.local_ts == ("10.1.0.0/25",) and ca.child.remote_ts == ("10.2.0.128/25",)
    assert cb.child.local_ts == ("10.2.0.128/25",) and cb.child.remote_ts == ("10.1.0.0/25",)


def test_disjoint_traffic_selectors_give_ts_unacceptable_and_no_child() -> None:
    ea, eb, lb = pair(b_remote_ts=("172.16.0.0/16",))
    eva, evb = up(ea, lb)
    assert len(of(eva, IkeSAUp)) == 1 and len(of(evb, IkeSAUp)) == 1  # IKE SA survives (RFC 7296 §1.2)
    assert of(eva, ChildSAUp) == [] and of(evb, ChildSAUp) == []
    assert any("TS_UNACCEPTABLE" in line for line in ea.pop_logs())


def test_no_common_esp_proposal_keeps_ike_sa_without_child() -> None:
    ea, eb, lb = pair(esp=("aes128gcm16",), esp_b=("aes256-sha256",))
    eva, evb = up(ea, lb)
    assert len(of(eva, IkeSAUp)) == 1 and of(eva, ChildSAUp) == [] and of(evb, ChildSAUp) == []
    assert any("NO_PROPOSAL_CHOSEN" in line for line in ea.pop_logs())
    assert ea._child_spis == set()  # the SPI offered for the refused child is free again


@pytest.mark.parametrize("esp", ["aes128gcm16", "aes128gcm16-curve25519"])  # without and with PFS
@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_child_rekey_make_before_break(esp: str, side: str) -> None:
    ea, eb, lb = pair(esp=(esp,))
    eva, evb = up(ea, lb)
    old_a, old_b = of(eva, ChildSAUp)[0].child, of(evb, ChildSAUp)[0].child
    (ea if side == "initiator" else eb).rekey_child("b" if side == "initiator" else "a", lb.now)
    lb.run(lb.now + 1)
    eva, evb = lb.take_events(A), lb.take_events(B)
    for events, old in ((eva, old_a), (evb, old_b)):
        assert [type(e) for e in events] == [ChildSAUp, ChildSADeleted]  # new first, then old goes
        new, gone = events
        assert new.rekey_of == old.spi_in and gone.spi_in == old.spi_in
        assert new.child.reqid == old.reqid and gone.reqid == old.reqid
        assert new.child.spi_in != old.spi_in and new.child.enc_key_in != old.enc_key_in
    assert_child_pair(eva[0], evb[0])
    assert [c["spi_in"] for c in ea.status(lb.now)["child_sas"]] == [f"{eva[0].child.spi_in:08x}"]
    assert ea._child_spis == {eva[0].child.spi_in.to_bytes(4, "big")}


def test_colliding_child_rekeys_are_refused_and_their_spis_released() -> None:
    ea, eb, lb = pair()
    eva, evb = up(ea, lb)
    ea.rekey_child("b", lb.now)
    eb.rekey_child("a", lb.now)  # both requests cross: each side refuses the other's (TEMPORARY_FAILURE)
    lb.run(lb.now + 1)
    assert lb.take_events(A) == [] and lb.take_events(B) == []
    for ep, first in ((ea, eva), (eb, evb)):
        assert ep._child_spis == {of(first, ChildSAUp)[0].child.spi_in.to_bytes(4, "big")}


def test_ike_rekey_moves_children_and_keeps_working() -> None:
    ea, eb, lb = pair()
    eva, evb = up(ea, lb)
    child_a = of(eva, ChildSAUp)[0].child
    old_spis = (of(eva, IkeSAUp)[0].spi_i, of(eva, IkeSAUp)[0].spi_r)
    assert ea.rekey_ike("b", lb.now)
    lb.run(lb.now + 1)
    eva, evb = lb.take_events(A), lb.take_events(B)
    (new_a,), (new_b,) = eva, evb  # only the new IKE SA: children were not touched
    assert isinstance(new_a, IkeSAUp) and new_a.rekey and new_b.rekey
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r) != old_spis
    for ep in (ea, eb):
        st = ep.status(lb.now)
        assert len(st["ike_sas"]) == 1 and st["ike_sas"][0]["spi_i"] == new_a.spi_i.hex()
        assert [c["spi_in"] for c in st["child_sas"]] == [f"{(child_a.spi_in if ep is ea else child_a.spi_out):08x}"]
    # The moved child rekeys over the new IKE SA (whose keys both sides derived alike).
    assert ea.rekey_child("b", lb.now) == 1
    lb.run(lb.now + 1)
    eva, evb = lb.take_events(A), lb.take_events(B)
    assert [type(e) for e in eva] == [ChildSAUp, ChildSADeleted] and eva[0].rekey_of == child_a.spi_in
    assert_child_pair(eva[0], evb[0])
    # And the responder can rekey the IKE SA too.
    assert eb.rekey_ike("a", lb.now)
    lb.run(lb.now + 1)
    assert [type(e) for e in lb.take_events(A)] == [IkeSAUp]
    assert ea.internal_errors == eb.internal_errors == 0


def test_lifetimes_trigger_rekeys() -> None:
    ea, eb, lb = pair(ike_lifetime_s=100, child_lifetime_s=50, dpd_interval_s=1000)
    eva, _ = up(ea, lb)
    first = of(eva, ChildSAUp)[0].child.spi_in
    lb.run(95.0)
    eva = lb.take_events(A)
    rekeys = of(eva, ChildSAUp)
    assert len(rekeys) >= 1 and rekeys[0].rekey_of == first  # child at 90% of 50 s
    assert any(isinstance(e, IkeSAUp) and e.rekey for e in eva)  # IKE SA at 90% of 100 s
    assert not of(eva, IkeSADown) and len(ea.status(lb.now)["child_sas"]) == 1


def test_terminate_deletes_both_sides() -> None:
    ea, eb, lb = pair()
    up(ea, lb)
    ea.terminate("b", lb.now)
    lb.run(lb.now + 1)
    eva, evb = lb.take_events(A), lb.take_events(B)
    assert [type(e) for e in eva] == [ChildSADeleted, IkeSADown]
    assert [type(e) for e in evb] == [ChildSADeleted, IkeSADown]
    assert evb[1].reason == "deleted by peer"
    assert ea.status(lb.now)["ike_sas"] == [] == eb.status(lb.now)["ike_sas"]


def test_wrong_psk_is_authentication_failed_and_no_sa() -> None:
    ea, eb, lb = pair(psk_b="other-secret")
    eva, evb = up(ea, lb)
    (fb,) = evb
    assert isinstance(fb, AuthFailed) and fb.peer == "a" and "PSK" in fb.reason and fb.addr[0] == A
    assert [type(e) for e in eva] == [AuthFailed, IkeSADown]
    assert "AUTHENTICATION_FAILED" in eva[0].reason
    assert ea.status(lb.now)["ike_sas"] == [] == eb.status(lb.now)["ike_sas"]
    assert any("PSK mismatch" in line for line in eb.pop_logs())
    assert ea._child_spis == set() == eb._child_spis  # the SPI offered for the first child is free again


def test_unknown_identity_is_authentication_failed() -> None:
    ea, eb, lb = pair()
    ea2 = IkeEndpoint(IkeConfig(local_id="intruder.example", psk="s3cret",
                                peers=(PeerConfig("b", "b.example", B, True, LAN_A, LAN_B),)),
                      "198.51.100.66", force_encap=False)
    lb2 = Loopback(ea2, eb)
    ea2.connect("b", 0.0)
    lb2.run(1.0)
    (fb,) = lb2.take_events(B)
    assert isinstance(fb, AuthFailed) and fb.peer == "intruder.example" and "matches no configured peer" in fb.reason
    assert [type(e) for e in lb2.take_events("198.51.100.66")] == [AuthFailed, IkeSADown]
    assert eb.status(1.0)["ike_sas"] == []


def test_responder_with_wrong_identity_is_refused_by_initiator() -> None:
    ea, eb, lb = pair()
    eb.config = IkeConfig(local_id="mallory.example", psk="s3cret", peers=eb.config.peers)
    eva, evb = up(ea, lb)
    assert isinstance(eva[0], AuthFailed) and "mallory.example" in eva[0].reason
    assert not of(eva, IkeSAUp) and not of(eva, ChildSAUp)


def test_force_encap_floats_to_4500_and_plain_stays_on_500() -> None:
    ea, eb, lb = pair(force_encap=True)
    eva, _ = up(ea, lb)
    ports = [(src[1], dst[1], decode_header(d).exchange) for src, dst, d in lb.trace]
    assert ports[0] == (500, 500, ExchangeType.IKE_SA_INIT) and ports[1] == (500, 500, ExchangeType.IKE_SA_INIT)
    assert all(p[:2] == (4500, 4500) for p in ports[2:]) and len(ports) == 4
    child = of(eva, ChildSAUp)[0].child
    assert child.encap and (child.local_port, child.remote_port) == (4500, 4500)

    ea, eb, lb = pair(force_encap=False)
    eva, evb = up(ea, lb)
    assert all((s[1], d[1]) == (500, 500) for s, d, _ in lb.trace)
    assert not of(eva, ChildSAUp)[0].child.encap and not of(evb, ChildSAUp)[0].child.encap


def test_child_rekey_retries_once_with_the_pfs_group_the_responder_asks_for() -> None:
    # A's first PFS group is curve25519; B only takes ecp256: INVALID_KE_PAYLOAD, then a second try.
    ea, eb, lb = pair(esp=("aes128gcm16-curve25519", "aes128gcm16-ecp256"), esp_b=("aes128gcm16-ecp256",))
    up(ea, lb)
    lb.trace.clear()
    assert ea.rekey_child("b", lb.now) == 1
    lb.run(lb.now + 1)
    eva, evb = lb.take_events(A), lb.take_events(B)
    assert [type(e) for e in eva] == [ChildSAUp, ChildSADeleted] == [type(e) for e in evb]
    assert_child_pair(eva[0], evb[0])
    requests = [d for s, _, d in lb.trace if s[0] == A and decode_header(d).exchange == ExchangeType.CREATE_CHILD_SA]
    assert len(requests) == 2
    assert ea._child_spis == {eva[0].child.spi_in.to_bytes(4, "big")}


def test_responder_that_requires_pfs_refuses_a_child_rekey_without_it() -> None:
    # In IKE_AUTH there is no DH for the child anyway; a later CREATE_CHILD_SA must bring one for B.
    ea, eb, lb = pair(esp=("aes128gcm16",), esp_b=("aes128gcm16-ecp256",))
    eva, evb = up(ea, lb)
    assert len(of(eva, ChildSAUp)) == 1 == len(of(evb, ChildSAUp))
    assert ea.rekey_child("b", lb.now) == 1
    lb.run(lb.now + 1)
    assert lb.take_events(A) == [] and lb.take_events(B) == []
    assert any("NO_PROPOSAL_CHOSEN" in line for line in ea.pop_logs())


@pytest.mark.parametrize("what", ["child", "ike"])
def test_terminate_during_a_rekey_deletes_at_once(what: str) -> None:
    ea, eb, lb = pair()
    up(ea, lb)
    start = lb.now
    if what == "child":
        assert ea.rekey_child("b", lb.now) == 1
    else:
        assert ea.rekey_ike("b", lb.now)
    ea.terminate("b", lb.now)  # the rekey is outstanding: its answer must not stall the DELETE
    lb.run(lb.now + 3)
    downs = of(lb.take_events(A), IkeSADown)
    assert [d.reason for d in downs] == ["terminated"]
    assert ea.status(lb.now)["ike_sas"] == [] and ea.status(lb.now)["child_sas"] == []
    assert of(lb.take_events(B), IkeSADown)
    assert lb.now - start < 5
