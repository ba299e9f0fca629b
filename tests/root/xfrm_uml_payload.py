"""Runs inside user-mode Linux (see test_xfrm_uml.py): two XfrmEngines in two netns, real kernel ESP.

Namespaces `xa` and `xb` joined by a veth (192.0.2.1 <-> 192.0.2.2); LAN addresses on lo:
xa 10.1.0.1 and 10.11.0.1, xb 10.2.0.1 and 10.12.0.1. Each side runs an XfrmEngine in its own
forked process (a netns belongs to a process) and installs two child SAs: AES-GCM-16 for
10.1/24 <-> 10.2/24 and AES-CBC + HMAC-SHA256-128 for 10.11/24 <-> 10.12/24. Raw packet sockets
on both veth ends record what each side sends on the wire. Prints one JSON line of facts; the test asserts on it.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import socket
import struct
import subprocess
import sys
import time
import traceback
from typing import Any

from pyroute2 import netns

from vpnlab_agent.dataplane import probe
from vpnlab_agent.sa import ChildSA, EspAlgorithm

GCM = EspAlgorithm("aes-gcm-16", 128)
CBC = EspAlgorithm("aes-cbc", 128, "hmac-sha256-128")
OUTER = {"xa": "192.0.2.1", "xb": "192.0.2.2"}
PING_PATTERN = "5a17c0de9e11"  # echo payload bytes: must never be seen on the wire
ETH_P_ALL = 0x0003


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done


def child_sa(side: str, alg: EspAlgorithm, reqid: int, spi_ab: int, spi_ba: int, lans: tuple[str, str],
             keys: dict[str, bytes]) -> ChildSA:
    """The SA as `side` sees it; keys/SPIs named by direction a->b / b->a so both sides agree."""
    a_to_b = {"spi": spi_ab, "enc": keys["enc_ab"], "integ": keys.get("integ_ab", b"")}
    b_to_a = {"spi": spi_ba, "enc": keys["enc_ba"], "integ": keys.get("integ_ba", b"")}
    mine, theirs = (a_to_b, b_to_a) if side == "xa" else (b_to_a, a_to_b)
    local, remote = (lans[0], lans[1]) if side == "xa" else (lans[1], lans[0])
    peer = "xb" if side == "xa" else "xa"
    return ChildSA(
        name=peer, reqid=reqid, spi_in=theirs["spi"], spi_out=mine["spi"], algorithm=alg,
        enc_key_in=theirs["enc"], enc_key_out=mine["enc"], integ_key_in=theirs["integ"],
        integ_key_out=mine["integ"], local_addr=OUTER[side], remote_addr=OUTER[peer],
        local_port=4500, remote_port=4500, local_ts=(local,), remote_ts=(remote,),
    )  # fmt: skip


def engine_side(side: str, conn: Any, mark: tuple[int, int] | None = None) -> None:
    """Child process: enter the netns, run an XfrmEngine, obey commands from the pipe."""
    try:
        netns.setns(side)
        from vpnlab_agent.dataplane.xfrm import XfrmEngine

        ike: list[Any] = []
        lifetimes: list[Any] = []
        engine = XfrmEngine(route_src="10.1.0.1" if side == "xa" else "10.2.0.1",
                            on_lifetime=lambda spi, hard: lifetimes.append([spi, hard]), mark=mark)
        engine.open(OUTER[side], lambda data, addr: ike.append([data.hex(), list(addr)]))
        conn.send(("ok", None))
        while True:
            cmd, arg = conn.recv()
            try:
                if cmd == "install":
                    engine.install(arg)
                    result: Any = None
                elif cmd == "remove":
                    engine.remove(arg)
                    result = None
                elif cmd == "counters":
                    result = engine.counters(arg).__dict__
                elif cmd == "status":
                    result = engine.status()
                elif cmd == "send_ike":
                    engine.send_ike(arg[0], arg[1])
                    result = None
                elif cmd == "ike_received":
                    result = list(ike)
                elif cmd == "lifetimes":
                    result = list(lifetimes)
                elif cmd == "close":
                    engine.close()
                    engine.close()  # idempotent
                    conn.send(("ok", None))
                    return
                else:
                    raise ValueError(cmd)
                conn.send(("ok", result))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    except Exception:
        conn.send(("error", traceback.format_exc()))


def capture(conn: Any, ns: str, iface: str, sent_by: str = "us") -> None:
    """Child process in ns: record what this side puts on the wire (outgoing frames only: decrypted
    tunnel-mode packets are re-injected on the same device and would show up as incoming).
    sent_by="peer": the frames the other end of iface sends (a switch port: its incoming ones)."""
    netns.setns(ns)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    s.settimeout(0.2)
    conn.send("ready")
    stats = {"frames": 0, "esp_in_udp": 0, "ike_udp": 0, "icmp": 0, "inner_addr_in_outer_hdr": 0,
             "pattern_seen": 0, "other": 0}
    pattern = bytes.fromhex(PING_PATTERN)
    while not conn.poll():
        try:
            frame, addr = s.recvfrom(65535)
        except TimeoutError:
            continue
        if (addr[2] == socket.PACKET_OUTGOING) != (sent_by == "us") or len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue  # not IPv4 (ARP ...)
        stats["frames"] += 1
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        proto, src, dst = ip[9], ip[12:16], ip[16:20]
        if src[0] == 10 or dst[0] == 10:
            stats["inner_addr_in_outer_hdr"] += 1
        if pattern in frame:
            stats["pattern_seen"] += 1
        if proto == 1:
            stats["icmp"] += 1
            if len(stats.setdefault("icmp_samples", [])) < 5:
                stats["icmp_samples"].append([socket.inet_ntoa(src), socket.inet_ntoa(dst), ip[ihl], ip[ihl + 1]])
        elif proto == 17:
            sport, dport = struct.unpack_from("!HH", ip, ihl)
            first = ip[ihl + 8 : ihl + 12]
            if 4500 in (sport, dport) and first != b"\0\0\0\0":
                stats["esp_in_udp"] += 1
            elif 4500 in (sport, dport) or 500 in (sport, dport):
                stats["ike_udp"] += 1
            else:
                stats["other"] += 1
        else:
            stats["other"] += 1
    conn.recv()
    conn.send(stats)


def start_captures(ctx: Any, where: tuple[tuple[str, str], ...] = (("xa", "va"), ("xb", "vb")),
                   sent_by: str = "us") -> list[Any]:
    """One capture process per (netns, device); returns their pipe ends once all are ready."""
    captures = []
    for ns, dev in where:
        cap_conn, cap_child = ctx.Pipe()
        ctx.Process(target=capture, args=(cap_child, ns, dev, sent_by), daemon=True).start()
        assert cap_conn.poll(10) and cap_conn.recv() == "ready"
        captures.append(cap_conn)
    return captures


def stop_captures(captures: list[Any]) -> dict[str, Any]:
    """Stop the captures and sum their stats (counts added, sample lists joined)."""
    wire: dict[str, Any] = {}
    for cap_conn in captures:
        cap_conn.send("stop")
        cap_conn.send("stop")
        stats = cap_conn.recv() if cap_conn.poll(5) else {"capture_failed": 1}
        for key, value in stats.items():
            wire[key] = wire.get(key, 0) + value if isinstance(value, int) else wire.get(key, []) + value
    return wire


class PipeWorker:
    """A child process for one side, driven over a pipe: (cmd, arg) in, ("ok" | "error", value) out.
    Its first answer (kept in .started) says it is up."""

    def __init__(self, ctx: Any, name: str, what: str, target: Any, *args: Any) -> None:
        self.name, self.what = name, what
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(name, child, *args), daemon=True)
        self.proc.start()
        self.started = self._expect()

    def _expect(self) -> Any:
        if not self.conn.poll(30):
            raise RuntimeError(f"{self.name}: {self.what} did not answer")
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def __call__(self, cmd: str, arg: Any = None) -> Any:
        self.conn.send((cmd, arg))
        return self._expect()


class Side(PipeWorker):
    def __init__(self, ctx: Any, name: str, mark: tuple[int, int] | None = None) -> None:
        super().__init__(ctx, name, "engine process", engine_side, mark)


def _forger(ns: str, spi: int, seq: int) -> None:
    netns.setns(ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((OUTER[ns], 0))
    # SPI, sequence number, then an IV, "ciphertext" and ICV that no key produced
    s.sendto(struct.pack("!II", spi, seq) + os.urandom(8 + 48 + 16), (OUTER["xb"], 4500))
    s.close()


def forge(ns: str, spi: int, seq: int) -> None:
    proc = mp.get_context("fork").Process(target=_forger, args=(ns, spi, seq), daemon=True)
    proc.start()
    proc.join(5)


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _pinger(ns: str, dst: str, count: int, src: str | None, mark: int, conn: Any) -> None:
    """Child process: ICMP echo from inside ns (the host may have no ping binary)."""
    netns.setns(ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    if mark:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    if src:
        s.bind((src, 0))
    s.settimeout(0.2)
    ident, payload = os.getpid() & 0xFFFF, bytes.fromhex(PING_PATTERN) * 8
    received = 0
    for seq in range(1, count + 1):
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        s.sendto(struct.pack("!BBHHH", 8, 0, _icmp_checksum(hdr + payload), ident, seq) + payload, (dst, 0))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                data, addr = s.recvfrom(2048)
            except TimeoutError:
                continue
            ihl = (data[0] & 0x0F) * 4
            rtype, _code, _sum, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if rtype == 0 and rid == ident and rseq == seq and addr[0] == dst:
                received += 1
                break
        time.sleep(0.1)
    conn.send(received)


def ping(ns: str, dst: str, count: int = 5, src: str | None = None, mark: int = 0) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_pinger, args=(ns, dst, count, src, mark, child), daemon=True)
    proc.start()
    received = conn.recv() if conn.poll(count * 3 + 5) else -1
    proc.join(2)
    return {"received": received, "sent": count}


def _nonzero_stats(text: str) -> dict[str, int]:
    """/proc/net/xfrm_stat lines that are not zero: why the kernel dropped packets, if it did."""
    pairs = (line.split() for line in text.splitlines() if line.strip())
    return {k: int(v) for k, v in pairs if int(v)}


def xfrm_dump(ns: str) -> dict[str, str]:
    return {
        "state": sh("ip", "-s", "xfrm", "state", ns=ns).stdout,
        "policy": sh("ip", "xfrm", "policy", ns=ns).stdout,
        "routes": sh("ip", "route", ns=ns).stdout,
    }


def setup_namespaces() -> None:
    for ns in OUTER:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
    sh("ip", "link", "add", "va", "netns", "xa", "type", "veth", "peer", "name", "vb", "netns", "xb")
    for ns, dev, lans in (("xa", "va", ("10.1.0.1", "10.11.0.1")), ("xb", "vb", ("10.2.0.1", "10.12.0.1"))):
        sh("ip", "addr", "add", f"{OUTER[ns]}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
        for lan in lans:
            sh("ip", "addr", "add", f"{lan}/32", "dev", "lo", ns=ns)


def main() -> dict[str, Any]:
    facts: dict[str, Any] = {"kernel": os.uname().release}
    facts["probe_error"] = probe.esp_probe_error()
    facts["auto_engine"] = type(probe.select_engine("auto", route_src=None)).__name__

    setup_namespaces()
    ctx = mp.get_context("fork")
    captures = start_captures(ctx)

    a, b = Side(ctx, "xa"), Side(ctx, "xb")
    gcm_keys = {"enc_ab": bytes(range(20)), "enc_ba": bytes(range(20, 40))}
    cbc_keys = {"enc_ab": bytes(range(40, 56)), "enc_ba": bytes(range(56, 72)),
                "integ_ab": bytes(range(100, 132)), "integ_ba": bytes(range(132, 164))}
    gcm_lans, cbc_lans = ("10.1.0.0/24", "10.2.0.0/24"), ("10.11.0.0/24", "10.12.0.0/24")
    for side in (a, b):
        side("install", child_sa(side.name, GCM, 1, 0x1000A, 0x1000B, gcm_lans, gcm_keys))
        side("install", child_sa(side.name, CBC, 2, 0x2000A, 0x2000B, cbc_lans, cbc_keys))
    facts["installed"] = xfrm_dump("xa")

    # The kernel refuses an SA (its outbound SPI to xb is taken): nothing of it may stay behind.
    bad = child_sa("xa", GCM, 9, 0x1000A, 0x9000B, ("10.21.0.0/24", "10.22.0.0/24"), gcm_keys)
    try:
        a("install", bad)
        facts["bad_install"] = "accepted"
    except RuntimeError as exc:
        facts["bad_install"] = str(exc)
    facts["after_bad_install"] = xfrm_dump("xa")

    # IKE rides the same UDP 4500 socket: the marker goes on the wire, on_ike gets it without.
    a("send_ike", (b"\x01ike-probe", ("192.0.2.2", 4500)))
    time.sleep(0.3)
    facts["ike_at_b"] = b("ike_received")

    facts["ping_gcm"] = ping("xa", "10.2.0.1")  # no -I: the route's src (route_src) must apply
    # no -I either: 10.1.0.1 (route_src) is outside 10.11/24, so the engine picks 10.11.0.1 as src
    facts["ping_cbc"] = ping("xa", "10.12.0.1")
    facts["xfrm_stat"] = {ns: _nonzero_stats(sh("cat", "/proc/net/xfrm_stat", ns=ns).stdout) for ns in OUTER}
    facts["route_get"] = sh("ip", "route", "get", "10.2.0.1", ns="xa", check=False).stdout
    facts["counters_gcm_a"] = a("counters", 0x1000B)
    facts["counters_cbc_a"] = a("counters", 0x2000B)
    facts["counters_gcm_b"] = b("counters", 0x1000A)

    # Forged ESP for xb's GCM SA: an old sequence number is a replay, a fresh one fails the ICV.
    forge("xa", 0x1000A, seq=1)
    forge("xa", 0x1000A, seq=100000)
    time.sleep(0.3)
    facts["counters_gcm_b_forged"] = b("counters", 0x1000A)
    facts["xfrm_stat_after_forged"] = b("status")["drops"]["kernel"]
    facts["ping_after_forged"] = ping("xa", "10.2.0.1", count=2)

    # Make-before-break: a rekeyed GCM SA (same reqid, new SPIs and keys) takes outbound at once.
    new_keys = {"enc_ab": bytes(range(200, 220)), "enc_ba": bytes(range(220, 240))}
    for side in (a, b):
        sa = child_sa(side.name, GCM, 1, 0x3000A, 0x3000B, gcm_lans, new_keys)
        if side is a:  # a small soft byte lifetime: the kernel's expire message must reach on_lifetime
            sa = dataclasses.replace(sa, soft_lifetime_bytes=300)
        side("install", sa)
    facts["after_rekey_states_a"] = sh("ip", "xfrm", "state", ns="xa").stdout
    facts["ping_rekeyed"] = ping("xa", "10.2.0.1")
    time.sleep(0.3)
    facts["lifetimes_a"] = a("lifetimes")
    facts["counters_old_after_rekey"] = a("counters", 0x1000B)
    facts["counters_new_after_rekey"] = a("counters", 0x3000B)
    for side in (a, b):
        side("remove", 0x1000B if side.name == "xa" else 0x1000A)
    facts["ping_after_old_removed"] = ping("xa", "10.2.0.1", count=3)
    facts["status_a"] = a("status")

    facts["wire"] = stop_captures(captures)

    for side in (a, b):
        side("close")
        side.proc.join(5)
    facts["after_close"] = {ns: xfrm_dump(ns) for ns in OUTER}
    facts["marks"] = marked_scenario(ctx, gcm_lans, gcm_keys)
    return facts


def marked_scenario(ctx: Any, lans: tuple[str, str], keys: dict[str, bytes]) -> dict[str, Any]:
    """xa's engine marks its states and policies (0x10/0xff); xb's does not. Only traffic that iptables
    marks (outbound to 10.2/24, inbound ESP on UDP 4500) may use xa's SA."""
    out: dict[str, Any] = {}
    a, b = Side(ctx, "xa", mark=(0x10, 0xFF)), Side(ctx, "xb")
    for side in (a, b):
        side("install", child_sa(side.name, GCM, 5, 0x5000A, 0x5000B, lans, keys))
    out["states"] = sh("ip", "xfrm", "state", ns="xa").stdout
    out["policies"] = sh("ip", "xfrm", "policy", ns="xa").stdout
    out["ping_unmarked"] = ping("xa", "10.2.0.1", count=2)  # matches no policy on xa: never encrypted
    out["inbound_marked_by"] = mark_inbound_esp("xa", "va", 0x10)
    out["ping_marked"] = ping("xa", "10.2.0.1", mark=0x10)  # SO_MARK: the policy lookup sees it
    out["counters_a"] = a("counters", 0x5000B)
    for side in (a, b):
        side("close")
        side.proc.join(5)
    out["after_close"] = xfrm_dump("xa")
    return out


def mark_inbound_esp(ns: str, dev: str, mark: int) -> str:
    """Mark the ESP-in-UDP arriving on dev, so that the marked states take it; say with what.
    Debian's UML 6.1 has legacy iptables; 7.x has neither it nor nf_tables for the ip family, but
    has tc's ingress hook and skbedit."""
    legacy = sh("iptables-legacy", "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport", "4500",
                "-j", "MARK", "--set-mark", hex(mark), ns=ns, check=False)
    if legacy.returncode == 0:
        return "iptables-legacy"
    sh("tc", "qdisc", "add", "dev", dev, "clsact", ns=ns)
    sh("tc", "filter", "add", "dev", dev, "ingress", "protocol", "ip", "flower", "ip_proto", "udp",
       "dst_port", "4500", "action", "skbedit", "mark", hex(mark), ns=ns)
    return "tc"

if __name__ == "__main__":
    try:
        result = main()
        code = 0
    except Exception:
        result = {"error": traceback.format_exc()}
        code = 1
    print("RESULT " + json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(code)  # forked children are daemons; do not wait on a stuck one
