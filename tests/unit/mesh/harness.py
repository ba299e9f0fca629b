"""An in-memory mesh: one HubRelay and several MeshManagers, with notifies delivered at once and a
stand-in for IKE that brings a shortcut up when one side builds and the other accepts.

Only the IKE layer is replaced (it has its own tests); the mesh logic under test is the real one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from vpnlab_agent.mesh.config import HubView, MeshConfig
from vpnlab_agent.mesh.manager import AcceptShortcut, BuildShortcut, DeleteShortcut, MeshManager, SendNotify
from vpnlab_agent.mesh.relay import HubRelay

HUB_LAN = "10.0.0.0/24"


def branch_lan(i: int) -> str:
    return f"10.{i}.0.0/24"


def _counter_rng(start: int):
    c = itertools.count(start)
    return lambda n: next(c).to_bytes(n, "big")


@dataclass
class Mesh:
    hub: HubRelay
    branches: dict[str, MeshManager]
    vendor: dict[str, bool]
    builds: list[BuildShortcut] = field(default_factory=list)
    accepts: dict[str, dict[str, AcceptShortcut]] = field(default_factory=dict)  # at node -> peer -> accept
    deletes: list[tuple[str, DeleteShortcut]] = field(default_factory=list)
    up: set[frozenset[str]] = field(default_factory=set)
    ike_works: bool = True
    _pending_builds: list[tuple[str, BuildShortcut]] = field(default_factory=list)

    def pump(self, now: float) -> None:
        """Deliver everything; IKE (builds) completes only after every notify is through, as it
        takes two round trips where a notify takes half of one."""
        moved = True
        while moved:
            moved = self._pump_notifies(now)
            builds, self._pending_builds = self._pending_builds, []
            for name, b in builds:
                moved = True
                self._build(name, b, now)

    def _pump_notifies(self, now: float) -> bool:
        any_moved = False
        moved = True
        while moved:
            moved = False
            while (a := self.hub.next_action()) is not None:
                moved = True
                assert isinstance(a, SendNotify)
                if self.vendor.get(a.peer, False):
                    self.branches[a.peer].notify_received("hub", a.notify_type, a.body, now)
            for name, mgr in self.branches.items():
                while (a := mgr.next_action()) is not None:
                    moved = True
                    self._do(name, a, now)
            any_moved = any_moved or moved
        return any_moved

    def _do(self, name: str, a: object, now: float) -> None:
        if isinstance(a, SendNotify):
            assert a.peer == "hub"
            self.hub.notify_received(name, a.notify_type, a.body, now)
        elif isinstance(a, AcceptShortcut):
            self.accepts.setdefault(name, {})[a.peer] = a
        elif isinstance(a, BuildShortcut):
            self.builds.append(a)
            self._pending_builds.append((name, a))
        elif isinstance(a, DeleteShortcut):
            self.deletes.append((name, a))
            self.accepts.get(name, {}).pop(a.peer, None)
            pair = frozenset((name, a.peer))
            if pair in self.up:
                self.up.discard(pair)
                self.branches[a.peer].shortcut_down(name, "deleted by peer", now)
                self.branches[name].shortcut_down(a.peer, "deleted", now)

    def _build(self, name: str, a: BuildShortcut, now: float) -> None:
        acc = self.accepts.get(a.peer, {}).get(name)
        if self.ike_works and a.peer in self.branches and acc is not None and acc.remote_ts == a.local_ts:
            self.up.add(frozenset((name, a.peer)))
            for side, peer in ((name, a.peer), (a.peer, name)):
                self.branches[side].shortcut_ike_up(peer, now)
                self.branches[side].shortcut_up(peer, now)

    def session(self, at: str, src: str, dst: str, now: float) -> bool:
        sent = self.branches[at].session_seen(src, dst, now)
        self.pump(now)
        return sent

    def tick(self, now: float) -> None:
        for mgr in self.branches.values():
            mgr.handle_timer(now)
        self.pump(now)


def make_mesh(n: int = 3, *, nat: tuple[str, ...] = (), limits: dict[str, int] | None = None,
              vendor_off: tuple[str, ...] = (), disabled: tuple[str, ...] = (), idle: float = 300,
              relay: bool = True) -> Mesh:
    names = [f"br{i}" for i in range(1, n + 1)]
    lans = {name: branch_lan(i) for i, name in enumerate(names, 1)}
    hub_cfg = MeshConfig(name="hub", role="hub", enabled=False, limit=200, lan_subnets=(HUB_LAN,),
                         branches={b: (lans[b],) for b in names}, relay=relay)
    hub = HubRelay(hub_cfg)
    branches = {}
    for i, name in enumerate(names, 1):
        reached = (HUB_LAN,) + tuple(lans[b] for b in names if b != name)
        cfg = MeshConfig(
            name=name, role="branch", enabled=name not in disabled, limit=(limits or {}).get(name, 50),
            idle_timeout_s=idle, public_address=None if name in nat else f"198.51.100.{10 + i}",
            lan_subnets=(lans[name],), router_addresses=(f"10.{i}.0.1",),
            hubs=(HubView("hub", (HUB_LAN,), reached),),
        )
        mgr = MeshManager(cfg, rng=_counter_rng(i * 1000))
        branches[name] = mgr
    vendor = {name: name not in vendor_off for name in names}
    mesh = Mesh(hub, branches, vendor)
    for name in names:
        hub.branch_up(name, vendor[name], 0.0)
        branches[name].hub_up("hub", True, 0.0)
    return mesh
