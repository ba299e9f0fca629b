"""Real IKE endpoints with mesh drivers on the in-memory loopback, with NAT devices in between: a
hub, and branches that sit behind endpoint-independent or symmetric NATs or have public addresses.

A NAT here behaves like kinds/nat's nftables rules: the mapping of an inside (ip, port) is one
public port for every destination (endpoint-independent, port-preserving) or a new one per
destination (symmetric); only replies come in (a datagram is let in only from a remote the
inside sent to on that public port). Punches are the drivers' real output, fed through the NATs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import ChildSAUp
from vpnlab_agent.ike.loopback import Loopback
from vpnlab_agent.mesh.config import HubView, MeshConfig
from vpnlab_agent.mesh.driver import MeshDriver

Addr = tuple[str, int]
HUB = "198.51.100.10"
HUB_LAN = "10.0.0.0/24"


@dataclass
class Nat:
    public: str
    symmetric: bool = False
    inside: set[str] = field(default_factory=set)
    maps: dict[tuple, int] = field(default_factory=dict)  # (inside,) or (inside, remote) -> public port
    back: dict[int, Addr] = field(default_factory=dict)  # public port -> inside
    holes: set[tuple[int, Addr]] = field(default_factory=set)  # (public port, remote) let in
    dropped: int = 0
    _ports: itertools.count = field(default_factory=lambda: itertools.count(40000))

    def out(self, src: Addr, dst: Addr) -> Addr:
        key = (src, dst) if self.symmetric else (src,)
        if key not in self.maps:
            port = next(self._ports) if self.symmetric or src[1] in self.back else src[1]
            self.maps[key], self.back[port] = port, src
        port = self.maps[key]
        self.holes.add((port, dst))
        return self.public, port

    def into(self, src: Addr, dst: Addr) -> Addr | None:
        if (dst[1], src) not in self.holes:
            self.dropped += 1
            return None
        return self.back[dst[1]]


class NatLoopback(Loopback):
    def __init__(self, *endpoints: IkeEndpoint, nats: list[Nat]) -> None:
        super().__init__(*endpoints)
        self.nats = nats

    def through(self, src: Addr, dst: Addr) -> tuple[Addr, Addr] | None:
        for nat in self.nats:
            if src[0] in nat.inside:
                src = nat.out(src, dst)
        for nat in self.nats:
            if dst[0] == nat.public:
                inside = nat.into(src, dst)
                if inside is None:
                    return None
                dst = inside
        return src, dst

    def _arrive(self, data: bytes, src: Addr, dst: Addr) -> None:
        moved = self.through(src, dst)
        if moved is None:
            self.dropped += 1
            return
        super()._arrive(data, *moved)

    def punch(self, src: Addr, dst: Addr) -> bool:
        """A NAT keepalive: opens the sender's NAT; True if it got through the far one (the far
        engine then discards it, as RFC 3948 says)."""
        return self.through(src, dst) is not None


@dataclass
class Lab:
    lb: NatLoopback
    eps: dict[str, IkeEndpoint]
    drivers: dict[str, MeshDriver]
    nats: dict[str, Nat]
    children: dict[str, list] = field(default_factory=dict)
    punches: dict[str, list[tuple[Addr, bool]]] = field(default_factory=dict)  # sender -> (to, got through)
    punch_lost: set[str] = field(default_factory=set)  # senders whose punches never leave

    def settle(self, until: float | None = None) -> None:
        """Run to `until` (or until quiet), firing everyone's timers on time, so that events are
        seen at the time they happen."""
        end = self.lb.now if until is None else until
        for _ in range(10_000):
            self.lb.run(self.lb.now)
            moved = False
            for name, d in self.drivers.items():
                for ev in self.lb.take_events(self.eps[name].local_addr):
                    moved = True
                    if isinstance(ev, ChildSAUp):
                        self.children[name].append(ev.child)
                    d.on_event(ev, self.lb.now)
                if (t := d.get_timer()) is not None and t <= self.lb.now:
                    d.handle_timer(self.lb.now)
                    moved = True
                while d.punches:
                    moved = True
                    to = d.punches.popleft()
                    ok = name not in self.punch_lost and self.lb.punch((self.eps[name].local_addr, 4500), to)
                    self.punches[name].append((to, ok))
            if moved or any(ep._out for ep in self.eps.values()):
                continue
            if self.lb.now >= end:
                return
            times = [t for d in self.drivers.values() if (t := d.get_timer()) is not None]
            if (t := self.lb.next_timer()) is not None:
                times.append(t)
            self.lb.run(max(self.lb.now, min([end, *times])))
        raise RuntimeError("the lab never settled")

    def sas(self, node: str, peer: str) -> list[dict]:
        return [s for s in self.eps[node].status(self.lb.now)["ike_sas"] if s["peer"] == peer]


def build(kinds: dict[str, str], *, punching: bool = True, shared: tuple[str, ...] = ()) -> Lab:
    """kinds: branch -> "public" | "eim" | "symmetric"; branch i has LAN 10.i.0.0/24; the
    `shared` branches sit behind one NAT device (carrier-grade NAT)."""
    names = list(kinds)
    lan = {b: f"10.{i}.0.0/24" for i, b in enumerate(names, 1)}
    nats: dict[str, Nat] = {}
    local: dict[str, str] = {}
    for i, b in enumerate(names, 1):
        if kinds[b] == "public":
            local[b] = f"198.51.100.{10 + i}"
        else:
            local[b] = f"100.64.{i}.2"
            first = next((s for s in shared if s in nats), None) if b in shared else None
            if first is not None:
                nats[b] = nats[first]
                nats[b].inside.add(local[b])
            else:
                nats[b] = Nat(f"198.51.100.{100 + i}", symmetric=kinds[b] == "symmetric", inside={local[b]})
    peers = tuple(PeerConfig(b, b, local[b] if kinds[b] == "public" else None, False,
                             (HUB_LAN,) + tuple(lan[o] for o in names if o != b), (lan[b],)) for b in names)
    eps = {"hub": IkeEndpoint(IkeConfig("hub", "psk", peers=peers), HUB, force_encap=True)}
    drivers = {"hub": MeshDriver(MeshConfig("hub", "hub", False, 200, lan_subnets=(HUB_LAN,),
                                            branches={b: (lan[b],) for b in names}, relay=True), eps["hub"])}
    for b in names:
        reached = (HUB_LAN,) + tuple(lan[o] for o in names if o != b)
        eps[b] = IkeEndpoint(IkeConfig(b, "psk", peers=(PeerConfig("hub", "hub", HUB, True, (lan[b],), reached),)),
                             local[b], force_encap=True)
        cfg = MeshConfig(b, "branch", True, 50, public_address=local[b] if kinds[b] == "public" else None,
                         lan_subnets=(lan[b],), router_addresses=(lan[b].replace("0/24", "1"),),
                         hubs=(HubView("hub", (HUB_LAN,), reached),), hole_punching=punching,
                         nat_type={"eim": "endpoint-independent", "symmetric": "symmetric"}.get(kinds[b]))
        drivers[b] = MeshDriver(cfg, eps[b])
    lab = Lab(NatLoopback(*eps.values(), nats=list({id(n): n for n in nats.values()}.values())), eps, drivers, nats,
              children={n: [] for n in eps}, punches={n: [] for n in eps})
    for b in names:
        eps[b].connect("hub", 0.0)
    lab.settle()
    return lab
