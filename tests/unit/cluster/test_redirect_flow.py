"""RFC 5685 end to end in memory: clients, the master's virtual-address endpoint and the members.

Real IkeEndpoints and real bytes (ike/loopback.py); the master's choice comes from a real pool and
balancer whose member loads are the endpoints' own established SAs.
"""

from __future__ import annotations

from collections import Counter

import pytest

from vpnlab_agent.cluster.arrivals import ArrivalCounter
from vpnlab_agent.cluster.redirect_client import MAX_REDIRECTS, RedirectClient
from vpnlab_agent.cluster.redirect_gateway import RedirectGateway
from vpnlab_agent.cluster.selection import Balancer, FewestTunnels
from vpnlab_agent.cluster.status import MemberStatus
from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike import redirect as rfc5685
from vpnlab_agent.ike.codec import Notify, decode
from vpnlab_agent.ike.constants import ExchangeType, NotifyType
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import IkeSAUp, Redirected
from vpnlab_agent.ike.extension import Extension
from vpnlab_agent.ike.loopback import Loopback

VIP = "203.0.113.2"
MEMBERS = {"gw1": "203.0.113.10", "gw2": "203.0.113.11", "gw3": "203.0.113.12"}
PSK = "cluster-psk"


def client_addr(i: int) -> str:
    return f"198.51.100.{10 + i}"


def client_cfg(i: int, gateway: str = VIP) -> IkeConfig:
    return IkeConfig(f"br{i}", PSK, peers=(PeerConfig("lb", "lb", gateway, True, (f"10.{100 + i}.0.0/24",),
                                                      ("10.0.1.0/24",)),))


def member_cfg(n: int) -> IkeConfig:
    peers = tuple(PeerConfig(f"br{i}", f"br{i}", client_addr(i), False, ("10.0.1.0/24",), (f"10.{100 + i}.0.0/24",))
                  for i in range(n))
    return IkeConfig("lb", PSK, peers=peers)


class Cluster:
    """gw1 is the master: its VIP endpoint redirects, its own endpoint serves like the others."""

    def __init__(self, n_clients: int, where: str = "init", *, client_ext: bool = True) -> None:
        self.arrivals = {m: ArrivalCounter() for m in MEMBERS}
        self.members = {m: IkeEndpoint(member_cfg(n_clients), a, force_encap=True, extensions=[self.arrivals[m]])
                        for m, a in MEMBERS.items()}
        self.balancer = Balancer(FewestTunnels())
        self.gateway = RedirectGateway("gw1", where, self.choose, self.served_here)
        self.vip = IkeEndpoint(member_cfg(n_clients), VIP, force_encap=True, extensions=[self.gateway])
        self.clients_ext = [RedirectClient({"lb": VIP}) for _ in range(n_clients)] if client_ext else []
        self.clients = [IkeEndpoint(client_cfg(i), client_addr(i), force_encap=True,
                                    extensions=[self.clients_ext[i]] if client_ext else [])
                        for i in range(n_clients)]
        self.net = Loopback(*self.clients, self.vip, *self.members.values(), now=1000.0)

    def served_here(self) -> None:
        self.balancer.handed_out("gw1", self.net.now)
        self.arrivals["gw1"].arrived()

    def load(self, m: str) -> int:
        ep = self.members[m]  # as cluster/wiring.py counts: established and half-open at its address
        n = sum(1 for s in ep.status(self.net.now)["ike_sas"] if s["state"] in ("established", "half-open"))
        if m == "gw1":  # the master also counts what it serves on the virtual address (legacy clients)
            n += sum(1 for s in self.vip.status(self.net.now)["ike_sas"] if s["state"] == "established")
        return n

    def choose(self) -> MemberStatus | None:
        # status "as of now": the loads and arrivals are exact, so pending redirects only bridge the flight
        now = self.net.now
        pool = {m: MemberStatus(m, a, self.load(m), 0, timestamp_ms=int(now * 1000), arrivals=self.arrivals[m].count)
                for m, a in MEMBERS.items()}
        t = self.balancer.choose(pool, now)
        if t is not None:
            self.balancer.handed_out(t, now)
        return None if t is None else pool[t]

    def connect_all(self, spread_s: float = 0.0) -> None:
        for i, c in enumerate(self.clients):
            self.net.now += spread_s / max(1, len(self.clients))
            c.connect("lb", self.net.now)
            self.net.deliver()
        self.net.run(self.net.now + 30)

    def serving(self, i: int) -> str | None:
        for name, ep in [*self.members.items(), ("vip", self.vip)]:
            if ep.is_up(f"br{i}"):
                return name
        return None


def notifies_in(net: Loopback, exchange: int, dst: str) -> list[list[int]]:
    out = []
    for src, to, data in net.trace:
        if to[0] == dst and data[18] == exchange and not data[19] & 0x20:
            try:
                msg = decode(data)
            except Exception:  # noqa: BLE001 - encrypted ones: only IKE_SA_INIT is read here
                continue
            out.append([p.notify_type for p in msg.payloads if isinstance(p, Notify)])
    return out


def test_redirect_at_init_goes_to_the_least_loaded_member_with_redirected_from() -> None:
    c = Cluster(3)
    c.connect_all()
    # gw1 (the master) keeps the first, at its own address: all equal and it sorts first; then gw2, gw3
    assert [c.serving(i) for i in range(3)] == ["gw1", "gw2", "gw3"]
    assert c.gateway.stats.redirected == 2 and c.gateway.stats.to_self == 1
    assert NotifyType.REDIRECT_SUPPORTED in notifies_in(c.net, ExchangeType.IKE_SA_INIT, VIP)[0]
    again = notifies_in(c.net, ExchangeType.IKE_SA_INIT, MEMBERS["gw2"])
    assert again and NotifyType.REDIRECTED_FROM in again[0] and NotifyType.REDIRECT_SUPPORTED not in again[0]
    assert any(isinstance(e, Redirected) and e.new_addr == MEMBERS["gw2"] for e in c.net.events[client_addr(1)])
    assert c.vip.status(c.net.now)["half_open"] == 0  # the redirect kept no state
    for ep in (*c.clients, c.vip, *c.members.values()):
        assert ep.internal_errors == 0


def test_redirect_in_init_carries_the_clients_nonce() -> None:
    c = Cluster(2)
    c.connect_all()
    for src, to, data in c.net.trace:
        if src[0] == VIP and data[18] == ExchangeType.IKE_SA_INIT and data[19] & 0x20:
            msg = decode(data)
            red = rfc5685.find(msg.payloads, NotifyType.REDIRECT)
            if red is not None:
                gw, nonce = rfc5685.parse_redirect(red)
                assert gw.value in MEMBERS.values() and len(nonce) >= 16
                return
    pytest.fail("no REDIRECT in an IKE_SA_INIT response")


def test_redirect_at_auth() -> None:
    c = Cluster(3, "auth")
    c.connect_all()
    assert [c.serving(i) for i in range(3)] == ["gw1", "gw2", "gw3"]
    assert c.gateway.stats.redirected == 2 and c.gateway.stats.to_self == 1
    # the REDIRECT rode in IKE_AUTH: the VIP answered full IKE_SA_INITs, and brought up no SA
    assert not any(s["state"] == "established" for s in c.vip.status(c.net.now)["ike_sas"])
    assert not any(isinstance(e, IkeSAUp) for e in c.net.events[VIP])


def test_client_without_redirect_supported_is_served_by_the_master() -> None:
    c = Cluster(3, client_ext=False)
    c.connect_all()
    assert [c.serving(i) for i in range(3)] == ["vip", "vip", "vip"]
    assert c.gateway.stats.unsupported == 3


def test_burst_of_100_clients_spreads_evenly() -> None:
    c = Cluster(100)
    c.connect_all(spread_s=1.0)
    got = Counter(c.serving(i) for i in range(100))
    got["gw1"] += got.pop("vip", 0)
    assert sum(got.values()) == 100 and max(got.values()) - min(got.values()) <= 2, got


class AlwaysRedirect(Extension):
    """A hostile or broken gateway: every IKE_SA_INIT gets a REDIRECT back to the same address."""

    name = "loop"
    init_notifies = frozenset({NotifyType.REDIRECT_SUPPORTED, NotifyType.REDIRECTED_FROM})

    def __init__(self, to: str) -> None:
        self.to, self.count = to, 0

    def admit_init(self, req, now):  # noqa: ANN001, ANN201
        from vpnlab_agent.ike.extension import ReplyWith

        self.count += 1
        return ReplyWith((rfc5685.redirect(rfc5685.Gateway.of(self.to), req.nonce),))


def test_loop_guard_follows_at_most_five_redirects_in_300_s() -> None:
    loop = AlwaysRedirect(VIP)
    vip = IkeEndpoint(member_cfg(1), VIP, force_encap=True, extensions=[loop])
    ext = RedirectClient({"lb": VIP})
    client = IkeEndpoint(client_cfg(0), client_addr(0), force_encap=True, extensions=[ext])
    net = Loopback(client, vip, now=1000.0)
    for _ in range(10):  # the owner retries, as the IKE service does
        client.connect("lb", net.now)
        net.run(net.now + 1)
        net.now += 1
    assert ext.stats.followed == MAX_REDIRECTS
    assert ext.stats.refused_loop >= 10 - 1
    net.now += 300
    client.connect("lb", net.now)
    net.run(net.now + 1)
    assert ext.stats.followed == 2 * MAX_REDIRECTS  # the window moved on: five more, then stop again


class WrongNonce(AlwaysRedirect):
    def admit_init(self, req, now):  # noqa: ANN001, ANN201
        from vpnlab_agent.ike.extension import ReplyWith

        return ReplyWith((rfc5685.redirect(rfc5685.Gateway.of(MEMBERS["gw3"]), bytes(32)),))


def test_init_redirect_with_a_foreign_nonce_is_ignored() -> None:
    vip = IkeEndpoint(member_cfg(1), VIP, force_encap=True, extensions=[WrongNonce(VIP)])
    gw3 = IkeEndpoint(member_cfg(1), MEMBERS["gw3"], force_encap=True)
    ext = RedirectClient({"lb": VIP})
    client = IkeEndpoint(client_cfg(0), client_addr(0), force_encap=True, extensions=[ext])
    net = Loopback(client, vip, gw3, now=1000.0)
    client.connect("lb", net.now)
    net.run(net.now + 5)
    assert ext.stats.refused_nonce == 1 and ext.stats.followed == 0
    assert not gw3.is_up("br0")


class InfoRedirector(Extension):
    name = "info-redirect"


def test_redirect_in_informational_on_an_established_sa() -> None:
    ext_gw = InfoRedirector()
    gw2 = IkeEndpoint(member_cfg(1), MEMBERS["gw2"], force_encap=True, extensions=[ext_gw])
    gw3 = IkeEndpoint(member_cfg(1), MEMBERS["gw3"], force_encap=True)
    ext = RedirectClient({"lb": MEMBERS["gw2"]})
    client = IkeEndpoint(client_cfg(0, MEMBERS["gw2"]), client_addr(0), force_encap=True, extensions=[ext])
    net = Loopback(client, gw2, gw3, now=1000.0)
    client.connect("lb", net.now)
    net.run(net.now + 5)
    assert gw2.is_up("br0")
    ext_gw.api.send_informational("br0", [rfc5685.redirect(rfc5685.Gateway.of(MEMBERS["gw3"]))], net.now)
    net.run(net.now + 5)
    assert gw3.is_up("br0") and not gw2.is_up("br0")
    assert ext.stats.followed == 1


def test_a_redirect_to_a_dead_member_is_given_up_after_7_5_s_not_15_5() -> None:
    """gw3 was chosen but is dead (no endpoint answers there): the client's IKE SA ends as DEAD
    after 0.5 + 1 + 2 + 4 s, so its owner goes back to the virtual address at once."""
    from vpnlab_agent.ike.events import DEAD, IkeSADown

    vip = IkeEndpoint(member_cfg(1), VIP, force_encap=True,
                      extensions=[RedirectGateway("gw1", "init", lambda: MemberStatus("gw3", MEMBERS["gw3"], 0, 0))])
    client = IkeEndpoint(client_cfg(0), client_addr(0), force_encap=True, extensions=[RedirectClient({"lb": VIP})])
    net = Loopback(client, vip, now=1000.0)
    client.connect("lb", net.now)
    net.run(1000.0 + 7.4)
    assert not [e for e in net.events[client_addr(0)] if isinstance(e, IkeSADown)]
    net.run(1000.0 + 7.6)
    (down,) = [e for e in net.events[client_addr(0)] if isinstance(e, IkeSADown)]
    assert down.reason == DEAD


def test_redirects_to_a_target_that_never_answers_do_not_spend_the_loop_guard() -> None:
    """The VIP keeps sending the client to a deaf member: each attempt ends DEAD after 7.5 s and the
    owner goes back to the VIP. Those are no loop: the client is never refused, and still follows
    the first answer that comes (before, the sixth redirect was refused for 300 s)."""
    from vpnlab_agent.ike.events import DEAD, IkeSADown

    vip = IkeEndpoint(member_cfg(1), VIP, force_encap=True, extensions=[AlwaysRedirect(MEMBERS["gw3"])])
    ext = RedirectClient({"lb": VIP})
    client = IkeEndpoint(client_cfg(0), client_addr(0), force_encap=True, extensions=[ext])
    net = Loopback(client, vip, now=1000.0)
    client.connect("lb", net.now)
    for _ in range(8):
        net.run(net.now + 8)
        downs = [e for e in net.take_events(client_addr(0)) if isinstance(e, IkeSADown)]
        assert downs, "the attempt did not end"
        client.connect("lb", net.now)  # the IKE service: back to the VIP (at once after DEAD)
    net.run(net.now + 1)
    assert (ext.stats.followed, ext.stats.refused_loop) == (9, 0)
    assert all(e.reason == DEAD for e in downs)
