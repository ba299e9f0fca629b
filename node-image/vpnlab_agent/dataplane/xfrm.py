"""Kernel XFRM engine: the kernel's ESP does the packets; we install states, policies and routes.

For a child SA: two ESP states (tunnel mode, ESP-in-UDP with the SA's ports), policies out/in/fwd
for every local_ts x remote_ts pair pointing at the SA's reqid, and a route to each remote_ts (with
src = route_src, so traffic the router itself originates falls inside the selectors). The UDP 4500
socket has UDP_ENCAP_ESPINUDP set: the kernel takes the ESP datagrams off it, IKE (non-ESP marker)
still arrives on it and goes to on_ike.

Make-before-break by reqid: the policies name the reqid, not an SPI. Installing a new SA of a known
reqid adds its states, then deletes the previous outbound state, so outbound moves at once; the old
inbound state keeps accepting until remove(old spi_in).

Preference (`ChildSA.preference`): policy priorities rank the more specific selectors first, then
the higher preference. The kernel keeps one policy per (selectors, direction, mark, if_id): when
two SAs have the same selectors, the preferred SA's reqid holds them (inbound too: until it goes,
the other SA's peer cannot send for those selectors), and when it goes they move back to the
other. Routes: each remote selector at `netconfig.tunnel_metric(preference)`.

Per-SA `mark` / `if_id` go on that SA's states and policies (the engine-wide mark is the default);
per-SA trailers other than plain RFC 4303 need the userspace engine: the kernel builds its own.

Routing contexts (per-network, docs/hsvpn.md): given `contexts` (name and table of each), an SA of a
context has its routes in the context's table and the context's table number as its mark, with the
inbound/outbound split of xfrm_specs.py; the contexts service makes each context a VRF device and
marks what enters it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vpnlab_agent.dataplane import xfrm_netlink as nl
from vpnlab_agent.dataplane.base import NATT_PORT, NON_ESP_MARKER, Engine, EngineError, IkeHandler
from vpnlab_agent.dataplane.routes import MAIN_TABLE, Route, RouteSync
from vpnlab_agent.dataplane.xfrm_specs import (  # noqa: F401 - re-exported: the engine's pure half
    algorithm_attrs, policy_priority, policy_specs, sa_mark, state_specs,
)
from vpnlab_agent.esp.trailer import RFC4303
from vpnlab_agent.netconfig import tunnel_metric
from vpnlab_agent.sa import ChildSA, SACounters

log = logging.getLogger(__name__)

SOL_UDP = 17
UDP_ENCAP = 100
IP_XFRM_POLICY = 17
RECV_SIZE = 65536
RTN_LOCAL = 2  # a route's type: an address of this host (in a VRF's table: of that VRF)

# on_lifetime(spi_in, hard): the kernel says the SA crossed its soft or hard byte lifetime.
LifetimeHandler = Callable[[int, bool], None]


def kernel_xfrm_errors(path: str = "/proc/net/xfrm_stat") -> dict[str, int]:
    """The namespace's XFRM error counters that are not zero (no policy, no state, template
    mismatch ...): why the kernel dropped what no SA counter shows."""
    try:
        with open(path, encoding="ascii") as f:
            pairs = [line.split() for line in f if line.strip()]
    except OSError:
        return {}
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit() and int(p[1])}


@dataclass
class _Installed:
    sa: ChildSA
    mark_in: nl.Mark | None  # what the kernel finds each state by, with its SPI
    mark_out: nl.Mark | None
    out_present: bool = True  # False once a newer SA of the same reqid took over outbound


@dataclass
class _Reqid:
    preference: int
    policies: list[nl.PolicySpec] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    spis_in: list[int] = field(default_factory=list)  # oldest first


class XfrmEngine(Engine):
    name: ClassVar[str] = "xfrm"

    def __init__(self, *, route_src: str | None = None, on_lifetime: LifetimeHandler | None = None,
                 mark: nl.Mark | None = None, contexts: list[Any] | None = None) -> None:
        super().__init__(route_src=route_src)
        self.on_lifetime = on_lifetime
        # (value, mask) on every state and policy: only packets carrying that fwmark use them
        # (routing contexts). Inbound ESP must carry the mark too (e.g. a mangle PREROUTING rule on
        # UDP 4500), or the kernel finds no state for it.
        self.mark = mark
        self.tables = {c.name: c.table for c in contexts or ()}  # routing context -> its table (and mark)
        self._nl: nl.XfrmSocket | None = None
        self._on_ike: IkeHandler | None = None
        self._lock = threading.Lock()
        self._sas: dict[int, _Installed] = {}  # by spi_in
        self._reqids: dict[int, _Reqid] = {}  # in install order
        self._policies: dict[tuple[Any, ...], nl.PolicySpec] = {}  # in the kernel, by PolicySpec.key
        self._routes = RouteSync()
        self._stop_r, self._stop_w = -1, -1
        self._threads: list[threading.Thread] = []
        self._expire: nl.XfrmSocket | None = None
        self._ike_in = 0

    # ---- socket --------------------------------------------------------------------------

    def open(self, local_addr: str, on_ike: IkeHandler, port: int = NATT_PORT) -> None:
        if self._sock is not None:
            raise EngineError("xfrm engine already open")
        sock = None
        try:
            self._nl = nl.XfrmSocket()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((local_addr, port))
            # The kernel decapsulates ESP-in-UDP arriving on this socket; IKE stays ours.
            sock.setsockopt(SOL_UDP, UDP_ENCAP, nl.UDP_ENCAP_ESPINUDP)
            for direction in (nl.XFRM_POLICY_IN, nl.XFRM_POLICY_OUT):
                sock.setsockopt(socket.IPPROTO_IP, IP_XFRM_POLICY, nl.socket_bypass_policy(direction))
        except OSError as exc:
            if sock is not None:
                sock.close()
            self.close()
            raise EngineError(f"xfrm engine: cannot open {local_addr}:{port}: {exc.strerror or exc}") from exc
        self._sock, self._on_ike = sock, on_ike
        self._stop_r, self._stop_w = os.pipe()
        self._threads = [threading.Thread(target=self._recv_loop, name="xfrm-ike", daemon=True)]
        try:
            self._expire = nl.XfrmSocket(groups=1 << (nl.XFRMNLGRP_EXPIRE - 1))
            self._threads.append(threading.Thread(target=self._expire_loop, name="xfrm-expire", daemon=True))
        except OSError as exc:  # lifetimes still enforced by the kernel; only the rekey hint is lost
            log.warning("xfrm: no expire notifications: %s", exc)
        for t in self._threads:
            t.start()

    def _recv_loop(self) -> None:
        assert self._sock is not None
        while True:
            ready, _, _ = select.select([self._sock, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data, addr = self._sock.recvfrom(RECV_SIZE)
            except OSError:
                return
            # ESP never reaches us (the kernel takes it); NAT keepalives (0xff) are dropped by the kernel.
            if len(data) > 4 and data[:4] == NON_ESP_MARKER and self._on_ike is not None:
                self._ike_in += 1
                try:
                    self._on_ike(data[4:], (addr[0], addr[1]))
                except Exception:
                    log.exception("IKE handler failed")

    def _expire_loop(self) -> None:
        assert self._expire is not None
        while True:
            ready, _, _ = select.select([self._expire, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                messages = self._expire.receive()
            except OSError:
                return
            for mtype, payload in messages:
                if mtype != nl.XFRM_MSG_EXPIRE:
                    continue
                dst, spi, hard = nl.parse_expire(payload)
                spi_in = self._owner(dst, spi)
                if spi_in is not None and self.on_lifetime is not None:
                    try:
                        self.on_lifetime(spi_in, hard)
                    except Exception:
                        log.exception("lifetime handler failed for SPI %#010x", spi_in)

    def _owner(self, dst: str, spi: int) -> int | None:
        """The inbound SPI of our SA pair that has the state (dst, spi), either direction."""
        with self._lock:
            entry = self._sas.get(spi)
            if entry is not None and entry.sa.local_addr == dst:
                return spi
            for spi_in, entry in self._sas.items():
                if entry.sa.spi_out == spi and entry.sa.remote_addr == dst:
                    return spi_in
        return None

    # ---- SAs -----------------------------------------------------------------------------

    def _netlink(self) -> nl.XfrmSocket:
        if self._nl is None:  # install() before open() is allowed (tests, probes)
            try:
                self._nl = nl.XfrmSocket()
            except OSError as exc:
                raise EngineError(f"xfrm engine: no XFRM netlink: {exc.strerror or exc}") from exc
        return self._nl

    def install(self, sa: ChildSA) -> None:
        if sa.trailer != RFC4303:
            raise EngineError(f"SA {sa.name}: ESP trailer {sa.trailer.kind!r} needs the userspace engine "
                              "(the kernel builds plain RFC 4303 trailers only)")
        if sa.context and sa.context not in self.tables:
            raise EngineError(f"SA {sa.name}: routing context {sa.context!r} is not one of this engine's "
                              f"({', '.join(self.tables) or 'none'})")
        table = self.tables.get(sa.context, 0)
        sock = self._netlink()
        inbound, outbound = state_specs(sa, self.mark, table)
        with self._lock:
            if sa.spi_in in self._sas:
                raise EngineError(f"SA {sa.name}: inbound SPI {sa.spi_in:#010x} is already installed")
            known = self._reqids.get(sa.reqid)
            added: list[nl.StateSpec] = []
            try:
                for spec in (inbound, outbound):
                    sock.request(nl.XFRM_MSG_NEWSA, nl.newsa_payload(spec), nl.NLM_F_CREATE | nl.NLM_F_EXCL)
                    added.append(spec)
                if known is None:
                    self._reqids[sa.reqid] = _Reqid(sa.preference, policy_specs(sa, self.mark, table),
                                                    self._routes_for(sa, table or MAIN_TABLE))
                    self._sync_policies()
                    self._routes.sync(r for g in self._reqids.values() for r in g.routes)
            except Exception as exc:
                for spec in added:
                    self._delete_state(spec.dst, spec.spi, spec.mark)
                if known is None:
                    self._reqids.pop(sa.reqid, None)
                    self._sync_back()
                if isinstance(exc, EngineError):
                    raise
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise EngineError(f"SA {sa.name}: kernel refused it: {why}") from exc
            group = self._reqids[sa.reqid]
            # Make-before-break: the new outbound state exists; retire the older ones.
            for spi_old in group.spis_in:
                old = self._sas[spi_old]
                if old.out_present:
                    self._delete_state(old.sa.remote_addr, old.sa.spi_out, old.mark_out)
                    old.out_present = False
            group.spis_in.append(sa.spi_in)
            self._sas[sa.spi_in] = _Installed(sa, inbound.mark, outbound.mark)
        log.info("xfrm: installed %s reqid %d in %#010x out %#010x", sa.name, sa.reqid, sa.spi_in, sa.spi_out)

    def remove(self, spi_in: int) -> None:
        with self._lock:
            entry = self._sas.pop(spi_in, None)
            if entry is None:
                return
            sa = entry.sa
            self._delete_state(sa.local_addr, sa.spi_in, entry.mark_in)
            if entry.out_present:
                self._delete_state(sa.remote_addr, sa.spi_out, entry.mark_out)
            group = self._reqids[sa.reqid]
            group.spis_in.remove(spi_in)
            if group.spis_in:
                # The remaining newest SA carries outbound again if it had been retired.
                newest = self._sas[group.spis_in[-1]]
                if not newest.out_present:
                    log.warning("xfrm: reqid %d has no outbound state left", sa.reqid)
                return
            del self._reqids[sa.reqid]
            self._sync_back()

    def _sync_policies(self) -> None:
        """Policies in the kernel = for each key, the one of the most preferred reqid holding it
        (equal preference: the earliest installed). UPDPOLICY replaces in place: no gap."""
        wanted: dict[tuple[Any, ...], nl.PolicySpec] = {}
        for group in sorted(self._reqids.values(), key=lambda g: -g.preference):
            for pol in group.policies:
                wanted.setdefault(pol.key, pol)
        sock = self._netlink()
        for key, pol in wanted.items():
            if self._policies.get(key) != pol:
                sock.request(nl.XFRM_MSG_UPDPOLICY, nl.policy_payload(pol), nl.NLM_F_CREATE)
                self._policies[key] = pol
        for key in [k for k in self._policies if k not in wanted]:
            pol = self._policies.pop(key)
            try:
                sock.request(nl.XFRM_MSG_DELPOLICY,
                             nl.policy_id_payload(pol.src_cidr, pol.dst_cidr, pol.direction, pol.mark, pol.if_id))
            except nl.XfrmError as exc:
                if not nl.ignore_missing(exc):
                    log.warning("xfrm: deleting policy %s -> %s: %s", pol.src_cidr, pol.dst_cidr, exc)

    def _sync_back(self) -> None:
        """After a reqid went: its policies move to whoever else holds them, its routes go."""
        try:
            self._sync_policies()
        except nl.XfrmError as exc:
            log.warning("xfrm: re-pointing policies: %s", exc)
        try:
            self._routes.sync(r for g in self._reqids.values() for r in g.routes)
        except EngineError as exc:
            log.warning("xfrm: %s", exc)

    def _delete_state(self, dst: str, spi: int, mark: nl.Mark | None) -> None:
        try:
            self._netlink().request(nl.XFRM_MSG_DELSA, nl.sa_id_payload(dst, spi, mark))
        except nl.XfrmError as exc:
            if not nl.ignore_missing(exc):
                log.warning("xfrm: deleting state %s spi %#010x: %s", dst, spi, exc)

    def _state_counters(self, dst: str, spi: int, mark: nl.Mark | None) -> nl.StateCounters | None:
        try:
            replies = self._netlink().request(nl.XFRM_MSG_GETSA, nl.sa_id_payload(dst, spi, mark))
        except nl.XfrmError as exc:
            if nl.ignore_missing(exc):
                return None
            raise EngineError(f"xfrm engine: reading SA {spi:#010x}: {exc.strerror}") from exc
        for mtype, payload in replies:
            if mtype == nl.XFRM_MSG_NEWSA:
                return nl.parse_usersa_info(payload)
        return None

    def counters(self, spi_in: int) -> SACounters:
        with self._lock:
            entry = self._sas.get(spi_in)
        if entry is None:
            raise EngineError(f"no SA with inbound SPI {spi_in:#010x}")
        sa = entry.sa
        cin = self._state_counters(sa.local_addr, sa.spi_in, entry.mark_in)
        cout = self._state_counters(sa.remote_addr, sa.spi_out, entry.mark_out) if entry.out_present else None
        result = SACounters()
        last_wall = 0
        if cin is not None:
            result.bytes_in, result.packets_in = cin.bytes, cin.packets
            result.replay_dropped, result.auth_failed = cin.replay, cin.integrity_failed
            last_wall = cin.use_time
        if cout is not None:
            result.bytes_out, result.packets_out = cout.bytes, cout.packets
            last_wall = max(last_wall, cout.use_time)
        if last_wall:  # the kernel keeps wall-clock seconds; the interface wants monotonic
            result.last_used = time.monotonic() - max(0.0, time.time() - last_wall)
        return result

    # ---- routes --------------------------------------------------------------------------

    def _routes_for(self, sa: ChildSA, table: int) -> list[Route]:
        """Route each remote selector (in `table`: main, or the SA's context's) the way the peer's
        outer address goes, so that the packet reaches the output path, where the XFRM policy takes it."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            try:
                hop = ipr.route("get", dst=sa.remote_addr)[0]
            except Exception as exc:
                raise EngineError(f"SA {sa.name}: no route to peer {sa.remote_addr}: {exc}") from exc
            gateway, oif = hop.get_attr("RTA_GATEWAY"), hop.get_attr("RTA_OIF")
            src = self._source_for(ipr, sa.local_ts, table)
        return [Route(str(ipaddress.IPv4Network(rts, strict=False)), oif, tunnel_metric(sa.preference),
                      gateway=gateway or None, prefsrc=src, table=table)
                for rts in sa.remote_ts
                if ipaddress.IPv4Network(rts, strict=False).prefixlen]  # never the default route; the policy still matches

    def _source_for(self, ipr: Any, local_ts: tuple[str, ...], table: int = MAIN_TABLE) -> str | None:
        """route_src if it lies inside the local selectors, else the first local address that does:
        a source outside them would match no policy and leave in the clear. In a VRF's table only
        the VRF's own addresses (its table's local routes) will do: the kernel refuses a route whose
        source is another context's address, which overlapping contexts may well put inside these
        selectors."""
        nets = [ipaddress.IPv4Network(ts, strict=False) for ts in local_ts]
        own = [r.get_attr("RTA_DST") for r in ipr.get_routes(family=socket.AF_INET, table=table)
               if r["type"] == RTN_LOCAL] if table != MAIN_TABLE else []
        candidates = own or ([self.route_src] if self.route_src else [])
        candidates += [] if own else [a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
                                      for a in ipr.get_addr(family=socket.AF_INET)]
        for addr in candidates:
            if addr and any(ipaddress.IPv4Address(addr) in n for n in nets):
                return addr
        log.warning("xfrm: no local address inside %s; routes get no source address", ",".join(local_ts))
        return None

    # ---- status / close ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self._sas.values())
        sas = []
        for e in entries:
            try:
                c = self.counters(e.sa.spi_in)
            except EngineError:
                c = SACounters()
            sas.append({
                "name": e.sa.name, "reqid": e.sa.reqid, "spi_in": e.sa.spi_in, "spi_out": e.sa.spi_out,
                "context": e.sa.context or None, "mark": f"{e.mark_out[0]:#x}" if e.mark_out else None,
                "outbound": e.out_present, "local_ts": list(e.sa.local_ts), "remote_ts": list(e.sa.remote_ts),
                **c.__dict__,
            })  # fmt: skip
        return {
            "engine": self.name,
            "device": None,
            "mark": f"{self.mark[0]:#x}/{self.mark[1]:#x}" if self.mark else None,
            "sa_count": len(entries),
            "ike": {"in": self._ike_in, "out": self._ike_out},
            "drops": {
                "replay": sum(s["replay_dropped"] for s in sas),
                "auth": sum(s["auth_failed"] for s in sas),
                "kernel": kernel_xfrm_errors(),
            },
            "sas": sas,
            # per routing context, as the userspace engine reports it (the contexts service shows it)
            "contexts": {"sas": {n: [s for s in sas if s["context"] == n] for n in self.tables}} if self.tables else None,
        }

    def close(self) -> None:
        with self._lock:
            spis = list(self._sas)
        for spi in spis:
            try:
                self.remove(spi)
            except Exception:
                log.exception("xfrm: removing SA %#010x", spi)
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        for t in self._threads:
            t.join(timeout=2)
        self._threads = []
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
        for s in (self._sock, self._nl, self._expire):
            if s is not None:
                s.close()
        self._sock = self._nl = self._expire = None
        self._policies.clear()
