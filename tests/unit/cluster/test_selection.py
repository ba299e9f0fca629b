"""Which member takes the next client: metrics, deterministic ties, and bursts that stay fair."""

from __future__ import annotations

from collections import Counter

import pytest

from vpnlab_agent.cluster.selection import (
    HOLD_S,
    MISS_S,
    SHUN_S,
    Balancer,
    FewestTunnels,
    FreeCapacity,
    metric_named,
)
from vpnlab_agent.cluster.status import MemberStatus

T0 = 1_800_000_000.0


def pool(*loads: int, capacity: int = 0, weights: tuple[int, ...] = (), ts: float = T0,
         arrivals: tuple[int, ...] = ()) -> dict[str, MemberStatus]:
    out = {}
    for i, active in enumerate(loads):
        out[f"gw{i + 1}"] = MemberStatus(f"gw{i + 1}", f"203.0.113.{11 + i}", active, capacity,
                                         weights[i] if weights else 1, timestamp_ms=int(ts * 1000),
                                         arrivals=arrivals[i] if arrivals else 0)
    return out


def test_fewest_tunnels_wins() -> None:
    assert Balancer(FewestTunnels()).choose(pool(5, 2, 9), T0) == "gw2"


def test_ties_are_broken_by_name() -> None:
    b = Balancer(FewestTunnels())
    assert b.choose(pool(4, 4, 4), T0) == "gw1"
    assert b.choose(dict(reversed(list(pool(4, 4, 4).items()))), T0) == "gw1"


def test_unavailable_and_full_members_are_skipped() -> None:
    p = pool(0, 3, 5, capacity=5)
    p["gw1"] = MemberStatus("gw1", "203.0.113.11", 0, 5, available=False)
    assert Balancer(FewestTunnels()).choose(p, T0) == "gw2"
    assert Balancer(FewestTunnels()).choose(pool(5, 5, capacity=5), T0) is None


def test_burst_of_100_within_a_second_spreads_evenly() -> None:
    """No status message arrives during the burst: only the counted redirects keep it fair."""
    b = Balancer(FewestTunnels())
    p = pool(0, 0, 0)
    got = Counter()
    for i in range(100):
        now = T0 + i / 100
        target = b.choose(p, now)
        assert target is not None
        b.handed_out(target, now)
        got[target] += 1
    assert max(got.values()) - min(got.values()) <= 1
    assert b.redirects == dict(got)


def test_burst_respects_existing_load() -> None:
    b = Balancer(FewestTunnels())
    p = pool(30, 0, 0)
    got = Counter()
    for i in range(90):
        t = b.choose(p, T0 + i / 90)
        b.handed_out(t, T0 + i / 90)
        got[t] += 1
    # 30 + 90 = 120 over three: each ends with 40 tunnels
    assert got == {"gw1": 10, "gw2": 40, "gw3": 40}


def test_pending_counts_until_the_members_arrivals_show_it() -> None:
    b = Balancer(FewestTunnels())
    assert b.pending("gw2", pool(0, 0, arrivals=(0, 5))["gw2"], T0) == 0
    b.handed_out("gw2", T0)
    b.handed_out("gw2", T0 + 0.1)
    assert b.pending("gw2", pool(0, 0, arrivals=(0, 5))["gw2"], T0 + 0.5) == 2
    # a status from just after the redirects may not include the clients yet
    assert b.pending("gw2", pool(0, 0, ts=T0 + 0.2, arrivals=(0, 5))["gw2"], T0 + 0.5) == 2
    # one arrived, and another client left meanwhile: the load is flat, the arrivals are not
    assert b.pending("gw2", pool(0, 0, ts=T0 + 1.2, arrivals=(0, 6))["gw2"], T0 + 1.3) == 1
    assert b.pending("gw2", pool(0, 1, ts=T0 + 2.2, arrivals=(0, 7))["gw2"], T0 + 2.3) == 0
    assert b.misses == {}


def test_arrivals_wrap_around() -> None:
    b = Balancer(FewestTunnels())
    b.pending("gw1", pool(0, arrivals=(2**32 - 1,))["gw1"], T0)
    b.handed_out("gw1", T0)
    b.handed_out("gw1", T0)
    assert b.pending("gw1", pool(1, ts=T0 + 1, arrivals=(0,))["gw1"], T0 + 1) == 1


def test_a_member_whose_clients_never_arrive_is_left_out_then_probed_one_client_at_a_time() -> None:
    """gw2 sends status messages but does not answer IKE: its load and arrivals stay flat."""
    b = Balancer(FewestTunnels())
    got: Counter[str] = Counter()

    def burst(now: float, n: int, ts: float) -> None:
        p = pool(got["gw1"], 0, ts=ts, arrivals=(got["gw1"], 0))  # gw1's clients all arrived by ts
        for i in range(n):
            t = b.choose(p, now + i / 100)
            assert t is not None
            b.handed_out(t, now + i / 100)
            got[t] += 1

    burst(T0, 10, T0)
    assert got == {"gw1": 5, "gw2": 5}  # nothing known yet: gw2 draws its share once
    burst(T0 + MISS_S + 0.5, 10, T0 + MISS_S + 0.2)  # gw2 reported MISS_S after them: none came
    assert got == {"gw1": 15, "gw2": 5} and b.misses["gw2"] == 5
    assert b.shunned("gw2", T0 + MISS_S + 1) > SHUN_S - 1
    # after SHUN_S one probe, not a share; it misses too, and the next wait is twice as long
    later = T0 + MISS_S + 0.5 + SHUN_S
    burst(later, 10, later - 0.1)
    assert got == {"gw1": 24, "gw2": 6}
    burst(later + MISS_S + 1, 1, later + MISS_S + 0.5)
    assert got["gw2"] == 6 and b.shunned("gw2", later + MISS_S + 1) > 2 * SHUN_S - 1


def test_a_shunned_member_is_back_as_soon_as_a_client_reaches_it() -> None:
    b = Balancer(FewestTunnels())
    b.pending("gw2", pool(9, 0, arrivals=(0, 0))["gw2"], T0)
    b.handed_out("gw2", T0)
    assert b.choose(pool(9, 0, ts=T0 + MISS_S, arrivals=(0, 0)), T0 + MISS_S) == "gw1"
    # the client was only late (or another came straight to it): gw2 answers IKE after all
    assert b.choose(pool(9, 1, ts=T0 + MISS_S + 1, arrivals=(0, 1)), T0 + MISS_S + 1) == "gw2"
    assert b.shunned("gw2", T0 + MISS_S + 1) == 0


def test_pending_expires_when_the_client_never_came() -> None:
    b = Balancer(FewestTunnels())
    b.handed_out("gw1", T0)
    stale = pool(0)["gw1"]
    assert b.pending("gw1", stale, T0 + HOLD_S - 0.1) == 1
    assert b.pending("gw1", stale, T0 + HOLD_S) == 0


def test_capacity_metric_uses_the_weighted_share_used() -> None:
    b = Balancer(FreeCapacity())
    # used share 10/100, 15/(100x2), 9/100: the weighted member is least used
    assert b.choose(pool(10, 15, 9, capacity=100, weights=(1, 2, 1)), T0) == "gw2"
    assert b.choose(pool(10, 21, 9, capacity=100, weights=(1, 2, 1)), T0) == "gw3"
    assert b.choose(pool(100, 100, capacity=100), T0) is None


def test_capacity_metric_fills_small_members_no_further_than_capacity() -> None:
    b = Balancer(FreeCapacity())
    p = pool(0, 0, capacity=0)
    p["gw1"] = MemberStatus("gw1", "203.0.113.11", 0, 3)
    p["gw2"] = MemberStatus("gw2", "203.0.113.12", 0, 100)
    got = Counter()
    for i in range(20):
        t = b.choose(p, T0)
        b.handed_out(t, T0)
        got[t] += 1
    assert got["gw1"] <= 3 and got["gw2"] >= 17


def test_capacity_metric_burst_follows_weights() -> None:
    b = Balancer(FreeCapacity())
    p = pool(0, 0, capacity=1000, weights=(1, 3))
    got = Counter()
    for i in range(400):
        t = b.choose(p, T0 + i / 400)
        b.handed_out(t, T0 + i / 400)
        got[t] += 1
    # members fill in proportion to capacity x weight: 1:3
    assert got == {"gw1": 100, "gw2": 300}


def test_metric_by_name() -> None:
    assert metric_named("tunnels").name == "tunnels" and metric_named("capacity").name == "capacity"
    with pytest.raises(ValueError, match="unknown load metric 'cpu'"):
        metric_named("cpu")


def test_a_status_message_in_the_middle_of_a_burst_does_not_count_its_clients_twice() -> None:
    """Both members at 100; 60 clients over one second; each member's status message comes once,
    gw1's early and gw2's late in the burst, and reports the clients that reached it by then."""
    b = Balancer(FewestTunnels())
    given: dict[str, list[float]] = {"gw1": [], "gw2": []}
    sent = {"gw1": T0 - 0.5, "gw2": T0 - 0.5}
    phase = {"gw1": 0.2, "gw2": 0.8}

    def status(m: str, now: float) -> MemberStatus:
        if now >= T0 + phase[m] > sent[m]:
            sent[m] = T0 + phase[m]
        arrived = sum(1 for t in given[m] if t + 0.01 <= sent[m])
        return MemberStatus(m, "203.0.113.11", 100 + arrived, 0, timestamp_ms=int(sent[m] * 1000), arrivals=arrived)

    for i in range(60):
        now = T0 + i / 60
        p = {m: status(m, now) for m in given}
        target = b.choose(p, now)
        assert target is not None
        b.handed_out(target, now)
        given[target].append(now)
    assert abs(len(given["gw1"]) - len(given["gw2"])) <= 1, {m: len(v) for m, v in given.items()}
