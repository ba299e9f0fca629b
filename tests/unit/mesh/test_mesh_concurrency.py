"""Two shortcuts built at once over real IKE in memory, one branch in both (issue 8, point 7).

br1 initiates a shortcut to br2 (br2 saw a session from br1's LAN) while br3 builds one towards br1
(br1 saw a session from br3's LAN). The hub's requests to br1 share one window (RFC 7296 §2.3):
the RELAY asking br1 to build, then the ACK telling br1 to accept br3, which so arrives later than
br3's IKE_AUTH can. br1 refused that IKE_AUTH (unknown identity), and the shortcut came up only on
br3's retry 250 ms later: the ~270 ms IKE_AUTH seen by `vpnlab measure`. br1 now holds the IKE_AUTH
of an identity it expects (its request is out, the ACK not in) and answers once the ACK names it.
"""

from __future__ import annotations

from vpnlab_agent.ike.events import AuthFailed, IkeSAUp
from vpnlab_agent.mesh.manager import RETRY_FIRST_S
from tests.unit.mesh.test_mesh_driver import BR, HUB, build

STEP = 0.001  # the drivers react within a millisecond, as the agent's listeners do at once
HUB_TO_BR1 = 0.020  # br1 is a little further from the hub: its answers to the hub come later


def run_for(lb, eps, drivers, seconds: float) -> dict[str, list]:
    """Advance in small steps, feeding each driver its endpoint's events as they come."""
    seen: dict[str, list] = {n: [] for n in eps}
    end = lb.now + seconds
    while lb.now < end:
        lb.run(lb.now + STEP)
        for name, d in drivers.items():
            for ev in lb.take_events(eps[name].local_addr):
                seen[name].append(ev)
                d.on_event(ev, lb.now)
            if (t := d.get_timer()) is not None and t <= lb.now:
                d.handle_timer(lb.now)
    return seen


def timeline(drivers, at: str, peer: str) -> dict[str, float]:
    st = drivers[at].status(0.0)
    for sc in st["shortcuts"]:
        if sc["peer"] == peer:
            return sc["timeline"]
    raise AssertionError(f"{at} has no shortcut with {peer}: {st['shortcuts']}")


def test_a_shortcut_towards_a_branch_that_is_building_one_comes_up_without_a_retry() -> None:
    lb, eps, drivers, children, settle = build(("br1", "br2", "br3"))
    lb.delay = lambda data, src, dst: HUB_TO_BR1 if (src[0], dst[0]) == (HUB, BR["br1"]) else 0.0
    t0 = lb.now
    drivers["br2"].session_seen("10.1.0.10", "10.2.0.10", t0)  # br1 will build to br2
    drivers["br1"].session_seen("10.3.0.10", "10.1.0.10", t0)  # br3 will build to br1
    seen = run_for(lb, eps, drivers, 1.0)

    assert not [e for e in seen["br1"] if isinstance(e, AuthFailed)], "br3's IKE_AUTH reached br1 before the ACK"
    assert eps["br1"].is_up("br2") and eps["br3"].is_up("br1")
    tl = timeline(drivers, "br3", "br1")
    assert not any(k.startswith("retry_") for k in tl), tl
    # One IKE_SA_INIT and one IKE_AUTH after the relay, never a retry's wait.
    assert tl["ike_auth"] - tl["relayed"] < RETRY_FIRST_S, tl
    up = [e.peer for e in seen["br3"] if isinstance(e, IkeSAUp)]
    assert up.count("br1") == 1, up
