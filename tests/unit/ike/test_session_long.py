"""Long runs in simulated time: collisions, lifetimes, loss. The end state must always be one IKE SA
and one matching child SA pair per side, with no internal error."""

from __future__ import annotations

import random

import pytest

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import proposals
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import ChildSADeleted, ChildSAUp, IkeSADown, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

A, B = "198.51.100.1", "198.51.100.2"


def pair(**kw: object) -> tuple[IkeEndpoint, IkeEndpoint, Loopback]:
    ca = IkeConfig(local_id="a", psk="k", peers=(PeerConfig("b", "b", B, True, ("10.1.0.0/24",), ("10.2.0.0/24",)),),
                   **kw)  # type: ignore[arg-type]
    cb = IkeConfig(local_id="b", psk="k", peers=(PeerConfig("a", "a", None, False, ("10.2.0.0/24",), ("10.1.0.0/24",)),),
                   **kw)  # type: ignore[arg-type]
    ea, eb = IkeEndpoint(ca, A, force_encap=True), IkeEndpoint(cb, B, force_encap=False)
    return ea, eb, Loopback(ea, eb)


def assert_consistent(ea: IkeEndpoint, eb: IkeEndpoint, now: float) -> None:
    sa, sb = ea.status(now), eb.status(now)
    est_a = [s for s in sa["ike_sas"] if s["state"] == "established"]
    est_b = [s for s in sb["ike_sas"] if s["state"] == "established"]
    assert len(est_a) == 1 == len(est_b)
    assert (est_a[0]["spi_i"], est_a[0]["spi_r"]) == (est_b[0]["spi_i"], est_b[0]["spi_r"])
    live_a = [c for c in sa["child_sas"] if c["state"] == "installed"]
    live_b = [c for c in sb["child_sas"] if c["state"] == "installed"]
    assert len(live_a) == 1 == len(live_b)
    assert live_a[0]["spi_in"] == live_b[0]["spi_out"] and live_a[0]["spi_out"] == live_b[0]["spi_in"]
    assert ea.internal_errors == 0 == eb.internal_errors


def child_keys_match(events_a: list, events_b: list) -> None:
    """Every child SA one side installed has its mirror image on the other side."""
    ups_a = {e.child.spi_in: e.child for e in events_a if isinstance(e, ChildSAUp)}
    ups_b = {e.child.spi_out: e.child for e in events_b if isinstance(e, ChildSAUp)}
    assert ups_a.keys() == ups_b.keys()
    for spi, a in ups_a.items():
        assert a.enc_key_in == ups_b[spi].enc_key_out and a.enc_key_out == ups_b[spi].enc_key_in


@pytest.mark.parametrize("what", ["child", "ike"])
def test_simultaneous_rekeys_from_both_sides_converge(what: str) -> None:
    ea, eb, lb = pair(dpd_interval_s=1000)
    ea.connect("b", 0.0)
    lb.run(1.0)
    all_a, all_b = lb.take_events(A), lb.take_events(B)
    for ep, peer in ((ea, "b"), (eb, "a")):  # both start before either request arrives
        getattr(ep, f"rekey_{what}")(peer, lb.now)
    lb.run(lb.now + 30)
    all_a += lb.take_events(A)
    all_b += lb.take_events(B)
    assert not [e for e in all_a + all_b if isinstance(e, IkeSADown)]
    assert_consistent(ea, eb, lb.now)
    child_keys_match(all_a, all_b)
    if what == "child":
        assert sum(isinstance(e, ChildSAUp) for e in all_a) >= 2  # the rekey happened eventually
    else:
        assert any(isinstance(e, IkeSAUp) and e.rekey for e in all_a)


def test_child_deleted_at_hard_lifetime_when_rekeys_are_refused() -> None:
    ea, eb, lb = pair(child_lifetime_s=50, ike_lifetime_s=10_000, dpd_interval_s=1000)
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.take_events(A), lb.take_events(B)
    eb.esp_proposals = proposals.esp_proposals_from_config(["aes256-sha256"])  # B now refuses our suite
    lb.run(60.0)
    assert [type(e) for e in lb.take_events(A)] == [ChildSADeleted]
    assert [type(e) for e in lb.take_events(B)] == [ChildSADeleted]
    assert ea.status(60.0)["child_sas"] == [] and ea.is_up("b")
    assert any("NO_PROPOSAL_CHOSEN" in line for line in ea.pop_logs())


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_two_hours_of_rekeys_and_dpd_with_loss(loss: float) -> None:
    ea, eb, lb = pair(ike_lifetime_s=300, child_lifetime_s=120, dpd_interval_s=30)
    rnd = random.Random(1234)
    lb.drop = lambda data, src, dst: rnd.random() < loss
    ea.connect("b", 0.0)
    all_a: list = []
    all_b: list = []
    t = 0.0
    while t < 7200:
        t += 60
        lb.run(t)
        all_a += lb.take_events(A)
        all_b += lb.take_events(B)
        if rnd.random() < 0.2:  # now and then an operator rekey from either side
            ep, peer = (ea, "b") if rnd.random() < 0.5 else (eb, "a")
            if ep.is_up(peer):
                (ep.rekey_child if rnd.random() < 0.5 else ep.rekey_ike)(peer, lb.now)
    lb.drop = None
    lb.run(t + 200)  # quiet period: rekeys finish, replaced SAs leave
    all_a += lb.take_events(A)
    all_b += lb.take_events(B)
    downs = [e for e in all_a if isinstance(e, IkeSADown)]
    if loss == 0.0:
        assert downs == []
    else:  # with loss an SA may die ("peer not responding") and then A connects again
        for _ in downs:
            ea.connect("b", lb.now)
        lb.run(lb.now + 60)
        all_a += lb.take_events(A)
        all_b += lb.take_events(B)
    assert_consistent(ea, eb, lb.now)
    ups = sum(isinstance(e, ChildSAUp) for e in all_a)
    assert ups >= 7200 / 120  # at least one child per lifetime
    assert sum(isinstance(e, ChildSAUp) for e in all_a) - sum(isinstance(e, ChildSADeleted) for e in all_a) == 1


def test_timer_advances_while_an_operator_rekey_is_in_flight_past_the_rekey_time() -> None:
    # Regression: a child whose rekey was started by hand and was still under way when its own
    # rekey time passed kept get_timer() in the past, so the owner's event loop spun.
    ea, eb, lb = pair(child_lifetime_s=50, dpd_interval_s=1000)
    ea.connect("b", 0.0)
    lb.run(1.0)
    lb.run(44.0)
    lb.drop = lambda data, src, dst: True  # the rekey stays in flight
    ea.rekey_child("b", lb.now)
    lb.run(80.0)  # Loopback raises if the timer gets stuck
    assert [type(e) for e in lb.take_events(A)][-1] is IkeSADown
