"""Glue between an IkeEndpoint and the mesh logic (MeshManager on a branch, HubRelay on a hub).

Still sans-I/O: IKE events and `now` in, calls on the endpoint's public API out. The driver is an
IKE extension (ike/extension.py): it gives shortcut child SAs a higher preference, so a shortcut
carrying a LAN's prefix wins over the hub tunnel. The asyncio service (service.py) feeds it events
and conntrack sessions; the endpoint wakes its owner to send what the driver queued. The unit tests
drive it with real endpoints over the in-memory loopback.

Shortcut peers are dynamic IKE peers (`IkeEndpoint.add_peer`): PSK of the lab, FQDN identity = node
name, traffic selectors from the mesh logic. They are added with initiate=False even on the side
that connects, so the IKE service never retries them on its own: the mesh logic decides.

Punches (NAT keepalives towards a peer's NAT mapping, punch.py) queue in `punches`, bounded; the
service sends them from the engine's UDP 4500 socket.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from vpnlab_agent.config import PeerConfig
from vpnlab_agent.ike.constants import VENDOR_ID
from vpnlab_agent.ike.endpoint import IkeEndpoint, IkeError
from vpnlab_agent.ike.events import ChildSADeleted, ChildSAUp, IkeSADown, IkeSAUp, NotifyReceived, PeerMoved
from vpnlab_agent.ike.extension import ChildInfo, ChildMeta, Extension, SaView
from vpnlab_agent.mesh.config import MeshConfig
from vpnlab_agent.mesh.manager import AcceptShortcut, BuildShortcut, DeleteShortcut, MeshManager, Punch, SendNotify
from vpnlab_agent.mesh.relay import HubRelay

MAX_ERRORS = 50
MAX_PUNCHES = 64  # queued punches, until the service sends them
# Child SAs with a shortcut peer win over the hub tunnel's, whose selectors cover the same LAN.
SHORTCUT_PREFERENCE = 100


class MeshDriver(Extension):
    name = "mesh"

    def __init__(self, cfg: MeshConfig, endpoint: IkeEndpoint, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.cfg = cfg
        self.ep = endpoint
        self.branch = cfg.role == "branch"
        self.manager: MeshManager | None = MeshManager(cfg, rng) if self.branch else None
        self.relay: HubRelay | None = None if self.branch else HubRelay(cfg)
        self.hubs = {h.name for h in cfg.hubs}
        self.children: dict[str, dict[int, int]] = {}  # shortcut peer -> {spi_in: reqid}
        self.errors: deque[str] = deque(maxlen=MAX_ERRORS)
        self.punches: deque[tuple[str, int]] = deque(maxlen=MAX_PUNCHES)
        self.log_lines: deque[str] = deque(maxlen=1000)
        endpoint.add_extension(self)

    def hold_auth(self, sa: SaView, identity: str, now: float) -> bool:
        # The hub's ACK naming the initiator may trail the initiator's IKE_AUTH (it can wait behind
        # another request in the hub's window towards us): hold it rather than refuse it, so the
        # shortcut does not wait for the initiator's retry (~270 ms, issue 8).
        return self.manager is not None and self.manager.expects_a_peer()

    def child_meta(self, sa: SaView, child: ChildInfo) -> ChildMeta | None:
        if self.manager is not None and sa.peer is not None and self.ep.is_dynamic(sa.peer):
            return ChildMeta(preference=SHORTCUT_PREFERENCE)
        return None

    @property
    def logic(self) -> MeshManager | HubRelay:
        return self.manager if self.manager is not None else self.relay  # type: ignore[return-value]

    # --- inputs --------------------------------------------------------------------------

    def on_event(self, ev: object, now: float) -> None:
        if isinstance(ev, NotifyReceived):
            self.logic.notify_received(ev.peer, ev.notify_type, ev.data, now)
        elif isinstance(ev, IkeSAUp):
            self.ike_up(ev.peer, now, VENDOR_ID in ev.vendor_ids, ev.remote_addr)
        elif isinstance(ev, PeerMoved) and self.relay is not None:
            self.relay.branch_mapped(ev.peer, ev.remote, now, self._behind_nat(ev.peer))
        elif isinstance(ev, IkeSADown):
            self.ike_down(ev.peer, ev.reason, now)
        elif isinstance(ev, ChildSAUp) and self.manager is not None:
            sa = ev.child
            if sa.name in self.manager.shortcut_peers():
                kids = self.children.setdefault(sa.name, {})
                if ev.rekey_of is not None:
                    kids.pop(ev.rekey_of, None)
                kids[sa.spi_in] = sa.reqid
                self.manager.shortcut_up(sa.name, now)
        elif isinstance(ev, ChildSADeleted):
            kids = self.children.get(ev.peer)
            if kids is not None:
                kids.pop(ev.spi_in, None)
        self.run_actions(now)

    def session_seen(self, src: str, dst: str, now: float) -> bool:
        if self.manager is None:
            return False
        sent = self.manager.session_seen(src, dst, now)
        self.run_actions(now)
        return sent

    def traffic(self, peer: str, total_bytes: int, now: float) -> None:
        if self.manager is not None:
            self.manager.traffic(peer, total_bytes, now)

    def first_packet(self, peer: str, t: float) -> None:
        if self.manager is not None:
            self.manager.first_packet(peer, t)

    def handle_timer(self, now: float) -> None:
        self.logic.handle_timer(now)
        self.run_actions(now)

    def get_timer(self) -> float | None:
        return self.logic.get_timer()

    def shortcut_spis(self) -> dict[str, list[int]]:
        return {peer: list(kids) for peer, kids in self.children.items() if kids}

    def status(self, now: float) -> dict[str, Any]:
        st = self.logic.status(now)
        st["errors"] = list(self.errors)
        return st

    def pop_logs(self) -> list[str]:
        out = self.logic.pop_logs() + list(self.log_lines)
        self.log_lines.clear()
        return out

    @property
    def _auth(self) -> Any:
        # A shortcut's far end is a branch of the same lab that proves itself as we do: with the
        # lab-wide PSK, or with a certificate of the lab CA naming it (no pinned one: any branch).
        return self.ep.config.auth

    # --- actions -------------------------------------------------------------------------

    def run_actions(self, now: float) -> None:
        while (a := self.logic.next_action()) is not None:
            try:
                self._do(a, now)
            except IkeError as e:
                self._error(f"{type(a).__name__} {getattr(a, 'peer', '')}: {e}")

    def _do(self, a: object, now: float) -> None:
        if isinstance(a, SendNotify):
            self.ep.send_notify(a.peer, a.notify_type, a.body, now)
        elif isinstance(a, BuildShortcut):
            self.ep.add_peer(PeerConfig(a.peer, a.remote_id, a.address, False, a.local_ts, a.remote_ts, auth=self._auth))
            self.ep.connect(a.peer, now, port=a.port)
            self.log_lines.append(f"shortcut to {a.peer}: IKE_SA_INIT to {a.address}:{a.port}")
        elif isinstance(a, Punch):
            self.punches.append(a.addr)
        elif isinstance(a, AcceptShortcut):
            self.ep.add_peer(PeerConfig(a.peer, a.remote_id, None, False, a.local_ts, a.remote_ts, auth=self._auth), now)
        elif isinstance(a, DeleteShortcut):
            self.children.pop(a.peer, None)
            if self.ep.is_dynamic(a.peer):
                self.ep.remove_peer(a.peer, now)
                self.log_lines.append(f"shortcut with {a.peer} removed: {a.reason}")

    # --- helpers -------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Take in the IKE SAs that came up before the driver was listening to events."""
        for sa in self.ep.sas():
            if sa.state == "established" and sa.peer is not None:
                self.ike_up(sa.peer, now, VENDOR_ID in sa.vendor_ids, sa.remote_addr)
        self.run_actions(now)

    def ike_up(self, peer: str, now: float, vendor: bool, remote: tuple[str, int] | None = None) -> None:
        if self.relay is not None:
            self.relay.branch_up(peer, vendor, now, remote, self._behind_nat(peer))
        elif self.manager is not None:
            if peer in self.hubs:
                self.manager.hub_up(peer, vendor, now)
            else:
                self.manager.shortcut_ike_up(peer, now)

    def ike_down(self, peer: str, reason: str, now: float) -> None:
        if self.relay is not None:
            if not self.ep.is_up(peer):
                self.relay.branch_down(peer, now)
        elif self.manager is not None:
            if peer in self.hubs:
                if not self.ep.is_up(peer):
                    self.manager.hub_down(peer, now)
            else:
                self.children.pop(peer, None)
                self.manager.shortcut_down(peer, reason, now)

    def _behind_nat(self, peer: str) -> bool:
        """A branch the hub has no address for sits behind NAT (the hub never initiates to it)."""
        try:
            return self.ep.peer(peer).address is None
        except IkeError:
            return False

    def _error(self, text: str) -> None:
        self.errors.append(text)
