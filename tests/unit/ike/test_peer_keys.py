"""Per-peer keys: the responder verifies AUTH with the key of the peer the IDi names, so a branch
that knows only its own key can neither claim another branch nor touch that branch's SAs; and the
rekey margin of the config decides when SAs are rekeyed."""

from __future__ import annotations

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import AuthFailed, ChildSAUp, IkeSADown, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

HUB, BR1, BR2 = "198.51.100.10", "198.51.100.11", "198.51.100.12"
LAN = {"hub": ("10.0.0.0/24",), "br1": ("10.1.0.0/24",), "br2": ("10.2.0.0/24",)}
KEYS = {"br1": "br1-only-key", "br2": "br2-only-key"}


def hub(**kw: object) -> IkeEndpoint:
    peers = tuple(PeerConfig(b, f"{b}.example", None, False, LAN["hub"], LAN[b], psk=KEYS[b]) for b in ("br1", "br2"))
    return IkeEndpoint(IkeConfig(local_id="hub.example", psk="", peers=peers, **kw), HUB,  # type: ignore[arg-type]
                       force_encap=False)


def branch(name: str, addr: str, *, claim: str | None = None, key: str | None = None, ts: str | None = None,
           **kw: object) -> IkeEndpoint:
    """A branch; `claim` another identity, `key` another key, `ts` other selectors (an impostor)."""
    peer = PeerConfig("hub", "hub.example", HUB, True, LAN[ts or name], LAN["hub"], psk=key or KEYS[name])
    return IkeEndpoint(IkeConfig(local_id=f"{claim or name}.example", psk="", peers=(peer,), **kw),  # type: ignore[arg-type]
                       addr, force_encap=True)


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def test_each_branch_comes_up_with_its_own_key_and_selectors() -> None:
    h, b1, b2 = hub(), branch("br1", BR1), branch("br2", BR2)
    lb = Loopback(h, b1, b2)
    b1.connect("hub", 0.0)
    b2.connect("hub", 0.0)
    lb.run(2.0)
    ups = of(lb.take_events(HUB), ChildSAUp)
    assert sorted((c.child.name, c.child.remote_ts) for c in ups) == [("br1", LAN["br1"]), ("br2", LAN["br2"])]


def test_a_branch_cannot_claim_another_branch_with_its_own_key() -> None:
    """br1's valid key, br2's identity: refused, and br2's SA is untouched (INITIAL_CONTACT included)."""
    h, b2 = hub(), branch("br2", BR2)
    impostor = branch("br1", BR1, claim="br2", key=KEYS["br1"], ts="br2")
    lb = Loopback(h, b2, impostor)
    b2.connect("hub", 0.0)
    lb.run(2.0)
    assert of(lb.take_events(HUB), IkeSAUp)
    impostor.connect("hub", lb.now)
    lb.run(lb.now + 2.0)
    events = lb.take_events(HUB)
    (fail,) = of(events, AuthFailed)
    assert fail.peer == "br2" and "does not verify" in fail.reason and fail.addr[0] == BR1
    assert not of(events, IkeSAUp) and not of(events, IkeSADown) and not of(lb.take_events(BR2), IkeSADown)
    assert [s["peer"] for s in h.status(lb.now)["ike_sas"] if s["state"] == "established"] == ["br2"]


def test_a_branch_asking_for_another_branchs_selectors_gets_none_of_them() -> None:
    h, b2 = hub(), branch("br2", BR2)
    greedy = branch("br1", BR1, ts="br2")  # authenticates as br1 (rightly), asks for br2's LAN
    lb = Loopback(h, b2, greedy)
    b2.connect("hub", 0.0)
    greedy.connect("hub", 0.0)
    lb.run(2.0)
    ups = of(lb.take_events(HUB), ChildSAUp)
    assert [(c.child.name, c.child.remote_ts) for c in ups] == [("br2", LAN["br2"])]
    assert not of(lb.take_events(BR2), IkeSADown)


def test_initial_contact_replaces_only_the_senders_own_sas() -> None:
    h, b1, b2 = hub(), branch("br1", BR1), branch("br2", BR2)
    lb = Loopback(h, b1, b2)
    b1.connect("hub", 0.0)
    b2.connect("hub", 0.0)
    lb.run(2.0)
    lb.take_events(HUB)
    again = branch("br1", BR1)  # br1 restarted: a new endpoint, so it sends INITIAL_CONTACT
    lb = Loopback(h, again, b2, now=lb.now)
    again.connect("hub", lb.now)
    lb.run(lb.now + 2.0)
    sas = sorted((s["peer"], s["state"]) for s in h.status(lb.now)["ike_sas"] if s["state"] == "established")
    assert sas == [("br1", "established"), ("br2", "established")]
    assert not of(lb.take_events(BR2), IkeSADown)


def test_rekey_margin_decides_when_children_rekey() -> None:
    h = hub(child_lifetime_s=100, rekey_margin_s=30)
    b1 = branch("br1", BR1, child_lifetime_s=100, rekey_margin_s=30)
    lb = Loopback(h, b1)
    b1.connect("hub", 0.0)
    lb.run(1.0)
    lb.take_events(BR1)
    lb.run(69.0)
    assert not of(lb.take_events(BR1), ChildSAUp)
    lb.run(72.0)  # the initiator rekeys at lifetime - margin = 70 s
    (new,) = of(lb.take_events(BR1), ChildSAUp)
    assert new.rekey_of is not None
