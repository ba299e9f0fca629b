"""policy.narrow/within in integers: the same answers as the plain ipaddress version they replace
(kept here as the reference), on random selectors and CIDRs of both address families."""

from __future__ import annotations

import ipaddress
import random

from vpnlab_agent.ike.codec import TrafficSelector, ts_to_cidrs
from vpnlab_agent.ike.policy import cidrs, narrow, selectors_for, within


def reference_narrow(offered: list[TrafficSelector], allowed: tuple[str, ...]) -> list[TrafficSelector]:
    out: list[TrafficSelector] = []
    for ts in offered:
        if ts.ip_proto != 0 or ts.start_port != 0 or ts.end_port != 65535:
            continue
        try:
            start, end = ipaddress.ip_address(ts.start), ipaddress.ip_address(ts.end)
        except ValueError:
            continue
        for cidr in allowed:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != start.version:
                continue
            lo, hi = max(start, net.network_address), min(end, net.broadcast_address)
            if lo <= hi:
                sel = TrafficSelector(str(lo), str(hi))
                if sel not in out:
                    out.append(sel)
    return out


def reference_within(got: list[TrafficSelector], offered: list[TrafficSelector]) -> bool:
    def ref_cidrs(selectors: list[TrafficSelector]) -> tuple[str, ...]:
        out: list[str] = []
        for ts in selectors:
            for c in ts_to_cidrs(ts):
                if c not in out:
                    out.append(c)
        return tuple(out)
    return bool(got) and all(reference_narrow([g], ref_cidrs(offered)) == [g] for g in got)


def _cidr(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return f"2001:db8:{rng.randrange(4):x}::/{rng.choice((48, 56, 64))}"
    return f"10.{rng.randrange(6)}.{rng.randrange(4) * 64}.0/{rng.choice((16, 18, 24, 26, 32))}"


def test_narrow_and_within_agree_with_the_reference() -> None:
    rng = random.Random(7)
    for _ in range(400):
        allowed = tuple(_cidr(rng) for _ in range(rng.randrange(1, 6)))
        offered = selectors_for(tuple(_cidr(rng) for _ in range(rng.randrange(1, 6))))
        if rng.random() < 0.2:
            offered.append(TrafficSelector("10.0.0.0", "10.0.0.255", ip_proto=6))  # port/proto-limited: left out
        got = narrow(offered, allowed)
        assert got == reference_narrow(offered, allowed), (offered, allowed)
        assert cidrs(offered) == tuple(dict.fromkeys(c for ts in offered for c in ts_to_cidrs(ts)))
        answer = got if rng.random() < 0.5 else selectors_for(tuple(_cidr(rng) for _ in range(2)))
        assert within(answer, offered) == reference_within(answer, offered), (answer, offered)


def test_a_hub_with_200_branches_narrows_each_lan_once() -> None:
    lans = tuple(f"10.{i}.0.0/24" for i in range(201))
    offered = selectors_for(lans)
    assert narrow(offered, lans) == offered
    assert within(offered, offered) and not within(selectors_for(("10.201.0.0/24",)), offered)
