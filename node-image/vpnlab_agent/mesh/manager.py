"""The branch side of Advanced Mesh VPN, sans-I/O: when to ask for a shortcut, when to build, accept
and tear one down. Time comes in as `now`; randomness (request ids) from an injectable rng.

Inputs:  session_seen(src, dst, now)            a forwarded NEW session (conntrack) in our router
         hub_up(hub, vendor, now) / hub_down     our IKE SA with a hub, and whether it speaks mesh
         notify_received(peer, type, data, now)  a private notify from a peer (only hubs count)
         shortcut_ike_up(peer, now), shortcut_up(peer, now), shortcut_down(peer, reason, now)
         traffic(peer, total_bytes, now), first_packet(peer, t)
         handle_timer(now)
Outputs: next_action() -> SendNotify | BuildShortcut | AcceptShortcut | DeleteShortcut | Punch | None,
         get_timer(), status(now).

Who builds: the branch that SEES the new session (B) asks, through the hub, the branch that owns
the session's source subnet (A) to initiate a direct IKE SA to B's public address. If both see a
session at once, both requests cross at the hub: the branch with the lower identity initiates and
the other only accepts, so exactly one shortcut comes up.

Routes: a shortcut's traffic selectors are the two LANs' real prefixes (a /32 LAN too). They are
covered by the hub tunnel's selectors as well; the shortcut's child SAs win because the mesh
extension (driver.py) gives them a higher preference, which both data-plane engines honour, and
traffic falls back to the hub tunnel as soon as the shortcut's child SA is removed.

Behind NAT, with hole_punching on, A builds to B's NAT mapping instead of a public address
(punch.py says who may and when).
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vpnlab_agent.log import LogLines
from vpnlab_agent.mesh import messages as m
from vpnlab_agent.mesh import punch
from vpnlab_agent.mesh.config import HubView, MeshConfig
from vpnlab_agent.mesh.messages import MeshNotify, RefuseReason
from vpnlab_agent.mesh.shortcut import (ACTIVE, IKE_PORT, AcceptShortcut, Action, BuildShortcut, DeleteShortcut,
                                        Punch, SendNotify, Shortcut, State)

__all__ = ["ACTIVE", "AcceptShortcut", "Action", "BuildShortcut", "DeleteShortcut", "MeshManager", "Punch",
           "SendNotify", "Shortcut", "State"]

MAX_ACTIONS = 10_000
MAX_REFUSED = 50
MAX_TIMELINE = 50
MAX_IGNORED = 10
RETRY_FIRST_S = 0.25  # initiator retry after a failed IKE attempt, doubling

def _covered(cidr: str, by: tuple[str, ...]) -> bool:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return any(net.subnet_of(ipaddress.IPv4Network(b, strict=False)) for b in by)


def _containing(addr: str, cidrs: tuple[str, ...]) -> str | None:
    ip = ipaddress.IPv4Address(addr)
    best: ipaddress.IPv4Network | None = None
    for c in cidrs:
        net = ipaddress.IPv4Network(c, strict=False)
        if ip in net and (best is None or net.prefixlen > best.prefixlen):
            best = net
    return str(best) if best is not None else None

class MeshManager(LogLines):
    def __init__(self, config: MeshConfig, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.cfg = config
        self.rng = rng
        self._hubs: dict[str, HubView] = {h.name: h for h in config.hubs}
        self._hubs_up: dict[str, bool] = {}  # hub -> announced our Vendor ID
        self.nat = punch.NatView(config)
        self._shortcuts: list[Shortcut] = []
        self._holddown: dict[str, float] = {}  # remote subnet -> until
        self._actions: deque[Action] = deque(maxlen=MAX_ACTIONS)
        self.refused: deque[dict[str, Any]] = deque(maxlen=MAX_REFUSED)
        self.history: deque[dict[str, Any]] = deque(maxlen=MAX_TIMELINE)  # finished shortcuts
        self.ignored: deque[dict[str, Any]] = deque(maxlen=MAX_IGNORED)  # sessions that did not trigger, why
        self.counts = {"sessions_seen": 0, "ignored": 0, "requests_sent": 0, "built": 0, "accepted": 0,
                       "deleted_idle": 0, "bad_messages": 0}
        self.log_lines: deque[str] = deque(maxlen=1000)

    # --- inputs --------------------------------------------------------------------------

    def hub_up(self, hub: str, vendor: bool, now: float) -> None:
        if hub in self._hubs:
            self._hubs_up[hub] = vendor
            if vendor and self.nat.behind:  # ask: the hub's own MAPPING may have come before we listened
                self._actions.append(SendNotify(hub, MeshNotify.MAPPING, m.encode(m.MeshMapping(0, None))))

    def hub_down(self, hub: str, now: float) -> None:
        self._hubs_up.pop(hub, None)
        self.nat.hub_gone(hub)

    def session_seen(self, src: str, dst: str, now: float) -> bool:
        """A forwarded NEW session src -> dst. True when it led to a request."""
        self.counts["sessions_seen"] += 1
        why = self._trigger_check(src, dst, now)
        if isinstance(why, str):
            self.counts["ignored"] += 1
            self.ignored.append({"src": src, "dst": dst, "why": why, "at": now})
            return False
        hub, remote, local = why
        if self.cfg.limit <= self._active():
            self._refuse_local(None, remote, RefuseReason.LIMIT_REACHED, now)
            return False
        if sum(1 for s in self._shortcuts if s.state is not State.UP) >= self.cfg.max_pending:
            self.counts["ignored"] += 1
            return False
        rid = int.from_bytes(self.rng(4), "big")
        # whole_site (routing contexts): one shortcut carries every LAN of both sites, whatever
        # context the session was in; otherwise just the two LANs of the session
        mine = self.cfg.lan_subnets if self.cfg.whole_site else (local,)
        sc = Shortcut(rid, "requester", State.REQUESTED, hub.name, mine, (remote,), since=now)
        sc.mark("session_seen", now)
        sc.mark("request_sent", now)
        self._shortcuts.append(sc)
        req = m.MeshRequest(rid, self.cfg.name, self.cfg.public_address, mine, (remote,), flags=self.nat.flags())
        self._actions.append(SendNotify(hub.name, MeshNotify.REQUEST, m.encode(req)))
        self.counts["requests_sent"] += 1
        self.log(f"session {src} -> {dst}: asking {hub.name} for a shortcut {local} <-> {remote}")
        return True

    def notify_received(self, peer: str, notify_type: int, data: bytes, now: float) -> None:
        if peer not in self._hubs:
            return  # mesh signalling is only taken from a hub's IKE SA
        try:
            msg = m.decode(notify_type, data)
        except m.MeshMessageError as e:
            self.counts["bad_messages"] += 1
            self.log(f"bad mesh notify from {peer}: {e}")
            return
        if notify_type == MeshNotify.RELAY and isinstance(msg, m.MeshRequest):
            self._on_relay(self._hubs[peer], msg, now)
        elif notify_type == MeshNotify.ACK and isinstance(msg, m.MeshAck):
            self._on_ack(peer, msg, now)
        elif notify_type == MeshNotify.REFUSE and isinstance(msg, m.MeshRefusal):
            self._on_refuse(msg, now)
        elif notify_type == MeshNotify.MAPPING and isinstance(msg, m.MeshMapping) and msg.mapping:
            self.nat.mapped(peer, msg.mapping)
        else:
            self.counts["bad_messages"] += 1

    def shortcut_ike_up(self, peer: str, now: float) -> None:
        sc = self._by_peer(peer)
        if sc is not None:
            sc.mark("ike_auth", now)

    def shortcut_up(self, peer: str, now: float) -> None:
        sc = self._by_peer(peer)
        if sc is None or sc.state not in (State.AWAITING, State.BUILDING, State.UP):
            return
        if sc.state is not State.UP:
            sc.state, sc.since, sc.last_traffic = State.UP, now, now
            sc.mark("routes_switched", now)
            self.log(f"shortcut with {peer} up: {','.join(sc.local_subnets)} <-> {','.join(sc.remote_subnets)}")

    def shortcut_down(self, peer: str, reason: str, now: float) -> None:
        sc = self._by_peer(peer)
        if sc is None:
            return
        if sc.state is State.BUILDING and now + RETRY_FIRST_S * 2 ** sc.retries < sc.since + self.cfg.request_timeout_s:
            # Under load the hub's ACK to B can trail its RELAY to us, so B may not know us yet
            # when our IKE_AUTH arrives: try again shortly, within the request timeout.
            sc.retry_at = now + RETRY_FIRST_S * 2 ** sc.retries
            sc.retries += 1
            self.log(f"shortcut to {peer} failed ({reason}): retry {sc.retries} in {sc.retry_at - now:.2f} s")
            return
        was_up = sc.state is State.UP
        self._finish(sc, f"down: {reason}", now)
        self._actions.append(DeleteShortcut(peer, reason))
        if not was_up:
            self._refused(peer, RefuseReason.SETUP_FAILED, now, detail=reason)
            self._holddown[sc.remote_subnets[0]] = now + self.cfg.holddown_s

    def traffic(self, peer: str, total_bytes: int, now: float) -> None:
        sc = self._by_peer(peer)
        if sc is not None and sc.state is State.UP and total_bytes != sc.last_bytes:
            sc.last_bytes = total_bytes
            sc.last_traffic = now

    def first_packet(self, peer: str, t: float) -> None:
        sc = self._by_peer(peer)
        if sc is not None:
            sc.mark("first_packet", t)

    def handle_timer(self, now: float) -> None:
        for sc in list(self._shortcuts):
            while sc.punch_at and sc.punch_at[0] <= now and sc.punch_to is not None and sc.state is not State.UP:
                sc.punch_at.pop(0)
                self._punch(sc, now)
            if sc.retry_at is not None and sc.retry_at <= now and sc.state is State.BUILDING:
                sc.retry_at = None
                sc.mark(f"retry_{sc.retries}" if sc.retries else "ike_sa_init", now)
                self._actions.append(BuildShortcut(sc.peer or "", sc.peer or "", sc.address or "",
                                                   sc.local_subnets, sc.remote_subnets, sc.port))
            if sc.state is State.UP:
                if now - sc.last_traffic >= self.cfg.idle_timeout_s:
                    self.counts["deleted_idle"] += 1
                    self.log(f"shortcut with {sc.peer} idle for {now - sc.last_traffic:.0f} s: deleting")
                    self._finish(sc, "idle", now)
                    self._actions.append(DeleteShortcut(sc.peer or "", "idle"))
            elif now - sc.since >= self.cfg.request_timeout_s:
                self._finish(sc, "timeout", now)
                if sc.peer is not None:
                    self._actions.append(DeleteShortcut(sc.peer, "timeout"))
                self._refused(sc.peer or sc.remote_subnets[0], RefuseReason.TIMEOUT, now, detail=(
                    f"hole punching to {sc.punch_to[0]}:{sc.punch_to[1]}: traffic stays on the hub" if sc.punch_to else ""))
                self._holddown[sc.remote_subnets[0]] = now + self.cfg.holddown_s
        for key, until in list(self._holddown.items()):
            if until <= now:
                del self._holddown[key]

    # --- outputs -------------------------------------------------------------------------

    def next_action(self) -> Action | None:
        return self._actions.popleft() if self._actions else None

    def get_timer(self) -> float | None:
        times = []
        for sc in self._shortcuts:
            if sc.state is State.UP:
                times.append(sc.last_traffic + self.cfg.idle_timeout_s)
            else:
                times.append(sc.since + self.cfg.request_timeout_s)
            if sc.retry_at is not None:
                times.append(sc.retry_at)
            if sc.punch_at and sc.state is not State.UP:
                times.append(sc.punch_at[0])
        times.extend(self._holddown.values())
        return min(times) if times else None

    def expects_a_peer(self) -> bool:
        """A request of ours is out and its ACK (naming the branch that will initiate) not yet in."""
        return any(sc.state is State.REQUESTED for sc in self._shortcuts)

    def shortcut_peers(self) -> list[str]:
        return [sc.peer for sc in self._shortcuts if sc.peer is not None]

    def status(self, now: float) -> dict[str, Any]:
        return {
            "enabled": self.cfg.enabled,
            "role": "branch",
            "limit": self.cfg.limit,
            "idle_timeout_s": self.cfg.idle_timeout_s,
            "public_address": self.cfg.public_address,
            "nat": self.nat.status(),
            "hubs": {h: {"vpnlab_peer": v} for h, v in self._hubs_up.items()},
            "active": self._active(),
            "shortcuts": [sc.to_status(now) for sc in self._shortcuts],
            "refused": list(self.refused),
            "timeline": list(self.history) + [
                {"id": f"{sc.request_id:08x}", "peer": sc.peer, "role": sc.role, "end": None,
                 "events": dict(sc.timeline)} for sc in self._shortcuts],
            "holddown": {k: round(v - now, 1) for k, v in self._holddown.items()},
            "counts": dict(self.counts),
            "ignored": list(self.ignored),
        }

    # --- rules ---------------------------------------------------------------------------

    def _trigger_check(self, src: str, dst: str, now: float) -> str | tuple[HubView, str, str]:
        """Why a session does not trigger (a string), or (hub, remote subnet, local subnet)."""
        if not self.cfg.enabled:
            return "mesh disabled"
        try:
            local = _containing(dst, self.cfg.lan_subnets)
            if _containing(src, self.cfg.lan_subnets) is not None:
                return "source is one of our LANs"
        except ValueError:
            return "not IPv4"
        if local is None:
            return "destination not in our LANs"
        if dst in self.cfg.router_addresses:
            return "destination is the router itself"
        for hub in self.cfg.hubs:
            remote = _containing(src, hub.reached)
            if remote is None:
                continue
            if _containing(src, hub.own_lans) is not None:
                return "source is the hub's own LAN"
            if not self._hubs_up.get(hub.name):
                return f"hub {hub.name} is down or does not speak mesh"
            if any(_covered(remote, sc.remote_subnets) or _covered(sc.remote_subnets[0], (remote,))
                   for sc in self._shortcuts):
                return "shortcut exists or is underway"
            if remote in self._holddown:
                return "held down after a refusal"
            return hub, remote, local
        return "source not reached through a hub"

    def _on_relay(self, hub: HubView, req: m.MeshRequest, now: float) -> None:
        """We are A: the hub asks us to build a shortcut to the requester B."""
        def refuse(reason: RefuseReason) -> None:
            self._refused(req.requester, reason, now, line=punch.pair_line(self.cfg.name, req.requester, reason))
            body = m.encode(m.MeshRefusal(req.request_id, req.requester, self.cfg.name, reason))
            self._actions.append(SendNotify(hub.name, MeshNotify.REFUSE, body))

        if req.target != self.cfg.name or req.requester == self.cfg.name:
            refuse(RefuseReason.INVALID)
            return
        if not all(_covered(s, self.cfg.lan_subnets) for s in req.wanted_subnets) or not all(
            _covered(s, hub.reached) and not _covered(s, hub.own_lans) and not _covered(s, self.cfg.lan_subnets)
            for s in req.requester_subnets
        ):
            refuse(RefuseReason.INVALID)
            return
        if not self.cfg.enabled:
            refuse(RefuseReason.MESH_DISABLED)
            return
        address, port = req.requester_addr, IKE_PORT
        if address is None:
            why = punch.refusal(self.nat, req)
            if why is RefuseReason.REQUESTER_SYMMETRIC and not self.nat.behind:
                self._reverse(hub.name, req, now)
                return
            if why is not None:
                refuse(why)
                return
            address, port = req.mapping  # type: ignore[misc]  # punch.refusal checked it
        mine = [sc for sc in self._shortcuts if sc.peer == req.requester or any(
            _covered(r, req.requester_subnets) for r in sc.remote_subnets)]
        race = None
        for sc in mine:
            if sc.state in (State.BUILDING, State.UP) or sc.role in ("initiator", "acceptor"):
                return  # a duplicate relay: the shortcut is underway or up
            race = sc
        if race is not None:
            # Both branches saw a session at once: the lower identity initiates, the other waits.
            if self.cfg.name > req.requester:
                self.log(f"crossing requests with {req.requester}: it initiates, we accept")
                return
            self._shortcuts.remove(race)
            self.log(f"crossing requests with {req.requester}: we initiate")
        elif self._active() >= self.cfg.limit:
            refuse(RefuseReason.LIMIT_REACHED)
            return
        ours = self.cfg.lan_subnets if self.cfg.whole_site else tuple(req.wanted_subnets)
        sc = Shortcut(req.request_id, "initiator", State.BUILDING, hub.name, ours,
                      tuple(req.requester_subnets), peer=req.requester, address=address, port=port, since=now)
        if race is not None:
            sc.timeline.update(race.timeline)
        sc.mark("relayed", now)
        self._shortcuts.append(sc)
        self.counts["built"] += 1
        if port != IKE_PORT:  # B is behind NAT: punch, then IKE_SA_INIT to its mapping (punch.py)
            sc.punch_to, sc.retry_at = (address, port), now + punch.LEAD_S
            self._punch(sc, now)
            return
        sc.mark("ike_sa_init", now)
        self._actions.append(BuildShortcut(req.requester, req.requester, address, sc.local_subnets, sc.remote_subnets))

    def _on_ack(self, hub: str, ack: m.MeshAck, now: float) -> None:
        """We are B: the hub relayed our request to ack.target, whose IKE_SA_INIT we now accept."""
        sc = next((s for s in self._shortcuts if s.request_id == ack.request_id and s.state is State.REQUESTED), None)
        if sc is None or ack.requester != self.cfg.name or sc.hub != hub:
            return
        if not all(_covered(r, ack.target_subnets) for r in sc.remote_subnets):
            self._finish(sc, "ack for other subnets", now)
            return
        other = self._by_peer(ack.target)
        if other is not None and other is not sc:
            self._shortcuts.remove(sc)  # crossing requests: we initiate to it already
            return
        sc.peer, sc.state, sc.since = ack.target, State.AWAITING, now
        sc.address = ack.target_mapping[0] if ack.target_mapping else None
        if self.cfg.whole_site:
            sc.remote_subnets = tuple(ack.target_subnets)  # every LAN of the other site
        sc.mark("relayed", now)
        self.counts["accepted"] += 1
        self._actions.append(AcceptShortcut(ack.target, ack.target, sc.local_subnets, sc.remote_subnets))
        if self.nat.flags() & m.NatFlag.PUNCH and self.nat.type != punch.SYMMETRIC and ack.target_mapping:
            sc.punch_to, sc.punch_at = ack.target_mapping, punch.schedule(now)[1:]
            self._punch(sc, now)  # our NAT lets A's IKE_SA_INIT in once this went out

    def _on_refuse(self, ref: m.MeshRefusal, now: float) -> None:
        sc = next((s for s in self._shortcuts if s.request_id == ref.request_id and s.role == "requester"), None)
        if sc is None or ref.requester != self.cfg.name:
            return
        if ref.reason is RefuseReason.REVERSE and sc.state is State.AWAITING and sc.peer == ref.target and sc.address:
            sc.state, sc.since = State.BUILDING, now  # A accepts: we initiate, to its public address
            sc.mark("ike_sa_init", now)
            self._actions.append(BuildShortcut(sc.peer, sc.peer, sc.address, sc.local_subnets, sc.remote_subnets))
            return
        self._finish(sc, f"refused: {ref.reason.text}", now)
        if sc.peer is not None:
            self._actions.append(DeleteShortcut(sc.peer, "refused"))
        self._refused(ref.target or sc.remote_subnets[0], ref.reason, now,
                      line=punch.pair_line(ref.target, self.cfg.name, ref.reason))
        self._holddown[sc.remote_subnets[0]] = now + self.cfg.holddown_s

    # --- helpers -------------------------------------------------------------------------

    def _active(self) -> int:
        return sum(1 for s in self._shortcuts if s.state in ACTIVE)

    def _by_peer(self, peer: str) -> Shortcut | None:
        return next((s for s in self._shortcuts if s.peer == peer), None)

    def _reverse(self, hub: str, req: m.MeshRequest, now: float) -> None:
        """We are A with a public address, B is behind a symmetric NAT: no hole can be punched, but B
        reaches us like its hub. We accept; REVERSE tells B to initiate."""
        if any(sc.peer == req.requester for sc in self._shortcuts):
            return  # a duplicate relay
        if self._active() >= self.cfg.limit:
            self._refused(req.requester, RefuseReason.LIMIT_REACHED, now)
            body = m.encode(m.MeshRefusal(req.request_id, req.requester, self.cfg.name, RefuseReason.LIMIT_REACHED))
            self._actions.append(SendNotify(hub, MeshNotify.REFUSE, body))
            return
        sc = Shortcut(req.request_id, "acceptor", State.AWAITING, hub, tuple(req.wanted_subnets),
                      tuple(req.requester_subnets), peer=req.requester, since=now)
        sc.mark("relayed", now)
        self._shortcuts.append(sc)
        self.counts["accepted"] += 1
        self._actions.append(AcceptShortcut(req.requester, req.requester, sc.local_subnets, sc.remote_subnets))
        body = m.encode(m.MeshRefusal(req.request_id, req.requester, self.cfg.name, RefuseReason.REVERSE))
        self._actions.append(SendNotify(hub, MeshNotify.REFUSE, body))

    def _punch(self, sc: Shortcut, now: float) -> None:
        sc.punches += 1
        sc.mark("punch", now)
        self._actions.append(Punch(sc.peer or "", sc.punch_to))  # type: ignore[arg-type]

    def _refuse_local(self, peer: str | None, remote: str, reason: RefuseReason, now: float) -> None:
        self._refused(peer or remote, reason, now)
        self._holddown[remote] = now + self.cfg.holddown_s

    def _refused(self, peer: str, reason: RefuseReason, now: float, detail: str = "", line: str | None = None) -> None:
        self.refused.append({"peer": peer, "reason": reason.text + (f" ({detail})" if detail else ""),
                             "code": reason.name, "at": now, **({"line": line} if line else {})})
        self.log(f"no shortcut with {peer}: {reason.text}{f' ({detail})' if detail else ''}")

    def _finish(self, sc: Shortcut, end: str, now: float) -> None:
        if sc in self._shortcuts:
            self._shortcuts.remove(sc)
        sc.mark("end", now)
        self.history.append({"id": f"{sc.request_id:08x}", "peer": sc.peer, "role": sc.role, "end": end,
                             "events": dict(sc.timeline)})
