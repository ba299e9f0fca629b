"""Kernel XFRM engine: the kernel's ESP does the packets; we install states, policies and routes.

For a child SA: two ESP states (tunnel mode, ESP-in-UDP with the SA's ports), policies out/in/fwd
for every local_ts x remote_ts pair pointing at the SA's reqid, and a route to each remote_ts (with
src = route_src, so traffic the router itself originates falls inside the selectors). The UDP 4500
socket has UDP_ENCAP_ESPINUDP set: the kernel takes the ESP datagrams off it, IKE (non-ESP marker)
still arrives on it and goes to on_ike.

Make-before-break by reqid: the policies name the reqid, not an SPI. Installing a new SA of a known
reqid adds its states, then deletes the previous outbound state, so outbound moves at once; the old
inbound state keeps accepting until remove(old spi_in).
"""

from __future__ import annotations

import errno
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
from vpnlab_agent.sa import ChildSA, SACounters

log = logging.getLogger(__name__)

SOL_UDP = 17
UDP_ENCAP = 100
IP_XFRM_POLICY = 17
RECV_SIZE = 65536
GCM_ICV_BITS = 128
HMAC_SHA256_TRUNC_BITS = 128

# on_lifetime(spi_in, hard): the kernel says the SA crossed its soft or hard byte lifetime.
LifetimeHandler = Callable[[int, bool], None]


def algorithm_attrs(sa: ChildSA, inbound: bool) -> dict[str, Any]:
    """The kernel algorithm names and keys for one direction of sa."""
    enc = sa.enc_key_in if inbound else sa.enc_key_out
    integ = sa.integ_key_in if inbound else sa.integ_key_out
    alg = sa.algorithm
    if alg.cipher == "aes-gcm-16":
        if len(enc) != alg.key_bits // 8 + 4:
            raise EngineError(f"SA {sa.name}: aes-gcm-16 key must be {alg.key_bits // 8} bytes + 4 salt")
        return {"aead": ("rfc4106(gcm(aes))", enc, GCM_ICV_BITS)}
    if alg.cipher == "aes-cbc" and alg.integ == "hmac-sha256-128":
        if len(enc) != alg.key_bits // 8 or len(integ) != 32:
            raise EngineError(f"SA {sa.name}: aes-cbc needs a {alg.key_bits // 8}-byte key and 32-byte HMAC key")
        return {"crypt": ("cbc(aes)", enc), "auth": ("hmac(sha256)", integ, HMAC_SHA256_TRUNC_BITS)}
    raise EngineError(f"SA {sa.name}: unsupported ESP algorithm {alg.cipher}/{alg.integ}")


def state_specs(sa: ChildSA, mark: nl.Mark | None = None) -> tuple[nl.StateSpec, nl.StateSpec]:
    """(inbound, outbound) states of a child SA."""
    common = {"reqid": sa.reqid, "soft_bytes": sa.soft_lifetime_bytes, "hard_bytes": sa.hard_lifetime_bytes,
              "mark": mark}
    inbound = nl.StateSpec(
        src=sa.remote_addr, dst=sa.local_addr, spi=sa.spi_in,
        encap=(sa.remote_port, sa.local_port) if sa.encap else None,
        **algorithm_attrs(sa, inbound=True), **common,
    )  # fmt: skip
    outbound = nl.StateSpec(
        src=sa.local_addr, dst=sa.remote_addr, spi=sa.spi_out,
        encap=(sa.local_port, sa.remote_port) if sa.encap else None,
        replay_window=0, **algorithm_attrs(sa, inbound=False), **common,
    )  # fmt: skip
    return inbound, outbound


def policy_specs(sa: ChildSA, mark: nl.Mark | None = None) -> list[nl.PolicySpec]:
    specs = []
    for lts in sa.local_ts:
        for rts in sa.remote_ts:
            # more specific selectors win: lower priority value
            prio = 2000 - _plen(lts) - _plen(rts)
            specs.append(nl.PolicySpec(lts, rts, nl.XFRM_POLICY_OUT, sa.local_addr, sa.remote_addr, sa.reqid, prio, mark))
            specs.append(nl.PolicySpec(rts, lts, nl.XFRM_POLICY_IN, sa.remote_addr, sa.local_addr, sa.reqid, prio, mark))
            specs.append(nl.PolicySpec(rts, lts, nl.XFRM_POLICY_FWD, sa.remote_addr, sa.local_addr, sa.reqid, prio, mark))
    return specs


def kernel_xfrm_errors(path: str = "/proc/net/xfrm_stat") -> dict[str, int]:
    """The namespace's XFRM error counters that are not zero (no policy, no state, template
    mismatch ...): why the kernel dropped what no SA counter shows."""
    try:
        with open(path, encoding="ascii") as f:
            pairs = [line.split() for line in f if line.strip()]
    except OSError:
        return {}
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit() and int(p[1])}


def _plen(cidr: str) -> int:
    return ipaddress.IPv4Network(cidr, strict=False).prefixlen


@dataclass
class _Installed:
    sa: ChildSA
    out_present: bool = True  # False once a newer SA of the same reqid took over outbound


@dataclass
class _Reqid:
    policies: list[nl.PolicySpec] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)
    spis_in: list[int] = field(default_factory=list)  # oldest first


class XfrmEngine(Engine):
    name: ClassVar[str] = "xfrm"

    def __init__(self, *, route_src: str | None = None, on_lifetime: LifetimeHandler | None = None,
                 mark: nl.Mark | None = None) -> None:
        super().__init__(route_src=route_src)
        self.on_lifetime = on_lifetime
        # (value, mask) on every state and policy: only packets carrying that fwmark use them
        # (routing contexts). Inbound ESP must carry the mark too (e.g. a mangle PREROUTING rule on
        # UDP 4500), or the kernel finds no state for it.
        self.mark = mark
        self._nl: nl.XfrmSocket | None = None
        self._sock: socket.socket | None = None
        self._on_ike: IkeHandler | None = None
        self._lock = threading.Lock()
        self._sas: dict[int, _Installed] = {}  # by spi_in
        self._reqids: dict[int, _Reqid] = {}
        self._stop_r, self._stop_w = -1, -1
        self._threads: list[threading.Thread] = []
        self._expire: nl.XfrmSocket | None = None
        self._ike_in = 0
        self._ike_out = 0

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

    def send_ike(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._sock is None:
            raise EngineError("xfrm engine is not open")
        try:
            self._sock.sendto(NON_ESP_MARKER + data, addr)
        except OSError as exc:
            raise EngineError(f"xfrm engine: sending IKE to {addr[0]}:{addr[1]}: {exc.strerror or exc}") from exc
        self._ike_out += 1

    # ---- SAs -----------------------------------------------------------------------------

    def _netlink(self) -> nl.XfrmSocket:
        if self._nl is None:  # install() before open() is allowed (tests, probes)
            try:
                self._nl = nl.XfrmSocket()
            except OSError as exc:
                raise EngineError(f"xfrm engine: no XFRM netlink: {exc.strerror or exc}") from exc
        return self._nl

    def install(self, sa: ChildSA) -> None:
        sock = self._netlink()
        inbound, outbound = state_specs(sa, self.mark)
        with self._lock:
            if sa.spi_in in self._sas:
                raise EngineError(f"SA {sa.name}: inbound SPI {sa.spi_in:#010x} is already installed")
            known = self._reqids.get(sa.reqid)
            group = known or _Reqid(policies=policy_specs(sa, self.mark))
            added: list[nl.StateSpec] = []
            try:
                for spec in (inbound, outbound):
                    sock.request(nl.XFRM_MSG_NEWSA, nl.newsa_payload(spec), nl.NLM_F_CREATE | nl.NLM_F_EXCL)
                    added.append(spec)
                for pol in group.policies:  # UPDPOLICY: insert or replace, so repeat installs are harmless
                    sock.request(nl.XFRM_MSG_UPDPOLICY, nl.policy_payload(pol), nl.NLM_F_CREATE)
                if known is None:
                    self._add_routes(sa, group.routes)
            except Exception as exc:
                for spec in added:
                    self._delete_state(spec.dst, spec.spi)
                if known is None:
                    self._drop_group(group)
                if isinstance(exc, EngineError):
                    raise
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise EngineError(f"SA {sa.name}: kernel refused it: {why}") from exc
            # Make-before-break: the new outbound state exists; retire the older ones.
            for spi_old in group.spis_in:
                old = self._sas[spi_old]
                if old.out_present:
                    self._delete_state(old.sa.remote_addr, old.sa.spi_out)
                    old.out_present = False
            group.spis_in.append(sa.spi_in)
            self._reqids[sa.reqid] = group
            self._sas[sa.spi_in] = _Installed(sa)
        log.info("xfrm: installed %s reqid %d in %#010x out %#010x", sa.name, sa.reqid, sa.spi_in, sa.spi_out)

    def remove(self, spi_in: int) -> None:
        with self._lock:
            entry = self._sas.pop(spi_in, None)
            if entry is None:
                return
            sa = entry.sa
            self._delete_state(sa.local_addr, sa.spi_in)
            if entry.out_present:
                self._delete_state(sa.remote_addr, sa.spi_out)
            group = self._reqids[sa.reqid]
            group.spis_in.remove(spi_in)
            if group.spis_in:
                # The remaining newest SA carries outbound again if it had been retired.
                newest = self._sas[group.spis_in[-1]]
                if not newest.out_present:
                    log.warning("xfrm: reqid %d has no outbound state left", sa.reqid)
                return
            del self._reqids[sa.reqid]
            self._drop_group(group)

    def _drop_group(self, group: _Reqid) -> None:
        sock = self._netlink()
        for pol in group.policies:
            try:
                sock.request(
                    nl.XFRM_MSG_DELPOLICY, nl.policy_id_payload(pol.src_cidr, pol.dst_cidr, pol.direction, pol.mark)
                )
            except nl.XfrmError as exc:
                if not nl.ignore_missing(exc):
                    log.warning("xfrm: deleting policy %s -> %s: %s", pol.src_cidr, pol.dst_cidr, exc)
        self._del_routes(group.routes)

    def _delete_state(self, dst: str, spi: int) -> None:
        try:
            self._netlink().request(nl.XFRM_MSG_DELSA, nl.sa_id_payload(dst, spi, self.mark))
        except nl.XfrmError as exc:
            if not nl.ignore_missing(exc):
                log.warning("xfrm: deleting state %s spi %#010x: %s", dst, spi, exc)

    def _state_counters(self, dst: str, spi: int) -> nl.StateCounters | None:
        try:
            replies = self._netlink().request(nl.XFRM_MSG_GETSA, nl.sa_id_payload(dst, spi, self.mark))
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
        cin = self._state_counters(sa.local_addr, sa.spi_in)
        cout = self._state_counters(sa.remote_addr, sa.spi_out) if entry.out_present else None
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

    def _add_routes(self, sa: ChildSA, made: list[dict[str, Any]]) -> None:
        """Route each remote selector the way the peer's outer address goes, so that the packet
        reaches the output path, where the XFRM policy takes it."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            try:
                hop = ipr.route("get", dst=sa.remote_addr)[0]
            except Exception as exc:
                raise EngineError(f"SA {sa.name}: no route to peer {sa.remote_addr}: {exc}") from exc
            gateway, oif = hop.get_attr("RTA_GATEWAY"), hop.get_attr("RTA_OIF")
            src = self._source_for(ipr, sa.local_ts)
            for rts in sa.remote_ts:
                net = ipaddress.IPv4Network(rts, strict=False)
                if net.prefixlen == 0:
                    continue  # never replace the default route; the policy still matches
                spec: dict[str, Any] = {"dst": str(net), "oif": oif}
                if gateway:
                    spec["gateway"] = gateway
                if src:
                    spec["prefsrc"] = src
                ipr.route("replace", **spec)
                made.append(spec)  # recorded as made at once: a later failure still removes it

    def _source_for(self, ipr: Any, local_ts: tuple[str, ...]) -> str | None:
        """route_src if it lies inside the local selectors, else the first local address that does:
        a source outside them would match no policy and leave in the clear."""
        nets = [ipaddress.IPv4Network(ts, strict=False) for ts in local_ts]
        candidates = [self.route_src] if self.route_src else []
        candidates += [a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)]
        for addr in candidates:
            if addr and any(ipaddress.IPv4Address(addr) in n for n in nets):
                return addr
        log.warning("xfrm: no local address inside %s; routes get no source address", ",".join(local_ts))
        return None

    def _del_routes(self, routes: list[dict[str, Any]]) -> None:
        if not routes:
            return
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            for spec in routes:
                try:
                    ipr.route("del", dst=spec["dst"], oif=spec["oif"])
                except NetlinkError as exc:
                    if exc.code not in (errno.ESRCH, errno.ENOENT):
                        log.warning("xfrm: deleting route %s: %s", spec["dst"], exc)

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
