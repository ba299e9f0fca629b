"""UserspaceEngine for real: four network namespaces, two engines, ESP in UDP on a veth underlay.

    hA (10.1.0.10) -- rA [lan0 10.1.0.1 | wan0 192.0.2.1] == veth == [wan0 192.0.2.2 | lan0 10.2.0.1] rB -- hB (10.2.0.10)

Each router runs `python -m vpnlab_agent.dataplane.standalone` (the engine without IKE) in its namespace
with a hand-made matching ChildSA pair. The host has no `ping`, so a small raw-socket ICMP pinger
stands in for it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from vpnlab_agent.dataplane.standalone import sa_to_dict
from vpnlab_agent.esp.codec import EspOutbound
from vpnlab_agent.sa import ChildSA, EspAlgorithm

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

PY = sys.executable
GCM128 = EspAlgorithm("aes-gcm-16", 128)
CBC256 = EspAlgorithm("aes-cbc", 256, "hmac-sha256-128")
PATTERN = b"VPNLAB-PLAINTEXT-MARKER-0123456789!"

PINGER = r"""
import json, os, socket, struct, sys, time
dst, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
src = sys.argv[4] if len(sys.argv) > 4 else None
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
if src: s.bind((src, 0))
s.settimeout(0.001)
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
got = set(); next_t = time.monotonic(); seq = 0
deadline = None
while True:
    now = time.monotonic()
    if seq < count and now >= next_t:
        body = struct.pack("!d", now) + b"vpnlab-ping" * 4
        h = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        s.sendto(struct.pack("!BBHHH", 8, 0, csum(h + body), ident, seq) + body, (dst, 0))
        seq += 1; next_t += interval
        if seq == count: deadline = now + 1.0
    if deadline and (time.monotonic() > deadline or len(got) == count): break
    try:
        pkt = s.recv(2048)
    except socket.timeout:
        continue
    ihl = (pkt[0] & 15) * 4
    t, c, _, i, q = struct.unpack_from("!BBHHH", pkt, ihl)
    if t == 0 and i == ident: got.add(q)
print(json.dumps({"sent": count, "received": len(got), "lost": sorted(set(range(count)) - got)}))
"""

SINK = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

SOURCE = r"""
import socket, sys
data = bytes.fromhex(sys.argv[3]) * int(sys.argv[4])
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20); c.sendall(data); c.close()
"""


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces and TUN devices")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun on this host")


def sh(*argv: str, timeout: float = 15, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def nsx(ns: str, *argv: str, timeout: float = 15, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, timeout=timeout, check=check)


class EngineProc:
    """The engine in its own process inside a namespace, driven over JSON lines."""

    def __init__(self, ns: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-m", "vpnlab_agent.dataplane.standalone"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def call(self, **cmd: object) -> dict:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        reply = json.loads(self.p.stdout.readline())
        if not reply["ok"]:
            raise AssertionError(reply["error"])
        return reply

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.call(op="close")
            except Exception:  # noqa: BLE001
                pass
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()


def sa_pair(alg: EspAlgorithm, reqid: int = 1, spi_base: int = 0x1000) -> tuple[ChildSA, ChildSA]:
    klen = alg.key_bits // 8 + (4 if alg.aead else 0)
    k_ab, k_ba = os.urandom(klen), os.urandom(klen)
    i_ab, i_ba = (b"", b"") if alg.aead else (os.urandom(32), os.urandom(32))
    spi_ab, spi_ba = spi_base + 1, spi_base + 2  # A->B and B->A
    a = ChildSA(name="rB", reqid=reqid, spi_in=spi_ba, spi_out=spi_ab, algorithm=alg,
                enc_key_in=k_ba, enc_key_out=k_ab, integ_key_in=i_ba, integ_key_out=i_ab,
                local_addr="192.0.2.1", remote_addr="192.0.2.2", local_port=4500, remote_port=4500,
                local_ts=("10.1.0.0/24",), remote_ts=("10.2.0.0/24",))
    b = ChildSA(name="rA", reqid=reqid, spi_in=spi_ab, spi_out=spi_ba, algorithm=alg,
                enc_key_in=k_ab, enc_key_out=k_ba, integ_key_in=i_ab, integ_key_out=i_ba,
                local_addr="192.0.2.2", remote_addr="192.0.2.1", local_port=4500, remote_port=4500,
                local_ts=("10.2.0.0/24",), remote_ts=("10.1.0.0/24",))
    return a, b


class Lab:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.hA, self.rA, self.rB, self.hB = (f"esp{tag}-{n}" for n in ("hA", "rA", "rB", "hB"))
        self.ns = [self.hA, self.rA, self.rB, self.hB]
        self.engines: list[EngineProc] = []

    def build(self) -> None:
        for ns in self.ns:
            sh("ip", "netns", "add", ns)
            nsx(ns, "ip", "link", "set", "lo", "up")

        def link(a: str, an: str, b: str, bn: str) -> None:
            tmp = "v" + uuid.uuid4().hex[:10]
            sh("ip", "link", "add", tmp + "a", "type", "veth", "peer", "name", tmp + "b")
            sh("ip", "link", "set", tmp + "a", "netns", a)
            sh("ip", "link", "set", tmp + "b", "netns", b)
            nsx(a, "ip", "link", "set", tmp + "a", "name", an)
            nsx(b, "ip", "link", "set", tmp + "b", "name", bn)

        link(self.hA, "eth0", self.rA, "lan0")
        link(self.rA, "wan0", self.rB, "wan0")
        link(self.rB, "lan0", self.hB, "eth0")
        for ns, dev, addr in [(self.hA, "eth0", "10.1.0.10/24"), (self.rA, "lan0", "10.1.0.1/24"),
                              (self.rA, "wan0", "192.0.2.1/24"), (self.rB, "wan0", "192.0.2.2/24"),
                              (self.rB, "lan0", "10.2.0.1/24"), (self.hB, "eth0", "10.2.0.10/24")]:
            nsx(ns, "ip", "addr", "add", addr, "dev", dev)
            nsx(ns, "ip", "link", "set", dev, "up")
        nsx(self.hA, "ip", "route", "add", "default", "via", "10.1.0.1")
        nsx(self.hB, "ip", "route", "add", "default", "via", "10.2.0.1")
        for r in (self.rA, self.rB):
            nsx(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def start_engines(self, offload: bool = True) -> tuple[EngineProc, EngineProc]:
        a, b = EngineProc(self.rA), EngineProc(self.rB)
        self.engines += [a, b]
        a.call(op="open", local_addr="192.0.2.1", route_src="10.1.0.1", offload=offload)
        b.call(op="open", local_addr="192.0.2.2", route_src="10.2.0.1", offload=offload)
        return a, b

    def destroy(self) -> None:
        for e in self.engines:
            e.close()
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def ping(self, count: int = 3, interval: float = 0.1, src_ns: str | None = None, dst: str = "10.2.0.10",
             src: str | None = None) -> dict:
        argv = [PY, "-c", PINGER, dst, str(count), str(interval)] + ([src] if src else [])
        return json.loads(nsx(src_ns or self.hA, *argv, timeout=30 + count * interval).stdout)


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()


class Capture:
    """tcpdump on one interface into a pcap file; parsed with a few lines of struct."""

    def __init__(self, ns: str, dev: str) -> None:
        self.path = Path(tempfile.mkstemp(suffix=".pcap")[1])
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "-n", "-U", "-s", "0", "-B", "16384",
                                   "-w", str(self.path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.p.stderr
        self.p.stderr.readline()  # "listening on ..." comes a little before packets are seen
        time.sleep(0.5)

    def stop(self) -> list[bytes]:
        time.sleep(0.3)
        self.p.terminate()
        self.p.wait(timeout=5)
        raw = self.path.read_bytes()
        self.path.unlink()
        frames, off = [], 24
        while off + 16 <= len(raw):
            incl = struct.unpack_from("<I", raw, off + 8)[0]
            frames.append(raw[off + 16:off + 16 + incl])
            off += 16 + incl
        return frames


def udp_payloads(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(ESP-in-UDP-4500 payloads, every other IPv4 frame)."""
    esp, other = [], []
    for f in frames:
        if f[12:14] != b"\x08\x00":
            continue  # ARP and such: no payload of ours
        ip = f[14:]
        ihl = (ip[0] & 15) * 4
        if ip[9] == 17 and struct.unpack_from("!HH", ip, ihl) == (4500, 4500):
            esp.append(ip[ihl + 8:])
        else:
            other.append(f)
    return esp, other


def transfer(lab: Lab, blocks: int) -> tuple[int, str]:
    sink = subprocess.Popen(["ip", "netns", "exec", lab.hB, PY, "-c", SINK, "10.2.0.10", "5201"],
                            stdout=subprocess.PIPE, text=True)
    assert sink.stdout
    assert sink.stdout.readline().strip() == "ready"
    nsx(lab.hA, PY, "-c", SOURCE, "10.2.0.10", "5201", PATTERN.hex(), str(blocks), timeout=60)
    n, digest = sink.stdout.readline().split()
    sink.wait(timeout=10)
    return int(n), digest


@pytest.mark.parametrize(("alg", "offload"), [(GCM128, True), (CBC256, True), (GCM128, False)],
                         ids=["aes-gcm-128", "aes-cbc-256-hmac-sha256", "aes-gcm-128-no-offload"])
def test_ping_and_tcp_through_tunnel_show_only_esp_on_the_underlay(lab: Lab, alg: EspAlgorithm, offload: bool) -> None:
    import hashlib

    a, b = lab.start_engines(offload)
    sa_a, sa_b = sa_pair(alg)
    a.call(op="install", sa=sa_to_dict(sa_a))
    b.call(op="install", sa=sa_to_dict(sa_b))
    cap = Capture(lab.rA, "wan0")
    r = lab.ping(count=5)
    assert r["received"] == 5, r
    blocks = 30000  # ~1 MB of a recognisable pattern
    n, digest = transfer(lab, blocks)
    assert n == len(PATTERN) * blocks
    assert digest == hashlib.sha256(PATTERN * blocks).hexdigest()
    frames = cap.stop()
    esp, other = udp_payloads(frames)
    # with UDP GSO the capture sees up to 64 kB "datagrams" that are cut up later, and a capture may
    # miss some under load: count bytes, and let the engine counters below prove the rest
    assert sum(map(len, esp)) > len(PATTERN) * blocks // 2, "the transfer must have crossed the underlay as ESP"
    assert other == [], f"{len(other)} non-ESP IPv4 frames on the underlay"
    whole = b"".join(frames)
    assert PATTERN[:12] not in whole and b"vpnlab-ping" not in whole, "plaintext leaked onto the underlay"
    spis = {struct.unpack_from("!I", p)[0] for p in esp}
    assert spis == {sa_a.spi_out, sa_b.spi_out}
    ca = a.call(op="counters", spi_in=sa_a.spi_in)["counters"]
    cb = b.call(op="counters", spi_in=sa_b.spi_in)["counters"]
    assert ca["packets_out"] >= 500 and cb["packets_in"] >= 500
    assert ca["bytes_out"] >= len(PATTERN) * blocks
    assert ca["auth_failed"] == cb["auth_failed"] == ca["replay_dropped"] == cb["replay_dropped"] == 0
    st = a.call(op="status")["status"]
    assert st["engine"] == "userspace" and st["sa_count"] == 1
    assert st["mtu"] == (1438 if alg.aead else 1422)
    assert st["offload"]["tun"] is offload
    if offload:  # the receiver merged segments: fewer TUN writes than ESP packets
        stb = b.call(op="status")["status"]
        assert stb["tun_writes"] < cb["packets_in"]


def _inject(lab: Lab, payload: bytes) -> None:
    # from rA's namespace, but not from the engine's socket: any sender may forge, the engine must not care
    code = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); "
            "s.sendto(bytes.fromhex(sys.argv[1]),('192.0.2.2',4500))")
    nsx(lab.rA, PY, "-c", code, payload.hex())


def _wait_counter(eng: EngineProc, spi: int, key: str, want: int, timeout: float = 3.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        c = eng.call(op="counters", spi_in=spi)["counters"]
        if c[key] >= want or time.monotonic() > end:
            return c
        time.sleep(0.05)


def test_replayed_tampered_and_out_of_selector_packets_are_dropped_and_counted(lab: Lab) -> None:
    a, b = lab.start_engines()
    sa_a, sa_b = sa_pair(GCM128)
    a.call(op="install", sa=sa_to_dict(sa_a))
    b.call(op="install", sa=sa_to_dict(sa_b))
    cap = Capture(lab.rA, "wan0")
    assert lab.ping(count=3)["received"] == 3
    frames = cap.stop()
    esp, _ = udp_payloads(frames)
    a_to_b = [p for p in esp if struct.unpack_from("!I", p)[0] == sa_a.spi_out]
    assert a_to_b
    before = b.call(op="counters", spi_in=sa_b.spi_in)["counters"]

    _inject(lab, a_to_b[0])  # replay
    c = _wait_counter(b, sa_b.spi_in, "replay_dropped", 1)
    assert c["replay_dropped"] == 1 and c["packets_in"] == before["packets_in"]

    forged = bytearray(a_to_b[-1])
    struct.pack_into("!I", forged, 4, 5000)  # a fresh sequence number the ICV does not cover
    _inject(lab, bytes(forged))
    forged2 = bytearray(a_to_b[-1])
    struct.pack_into("!I", forged2, 4, 5001)
    forged2[30] ^= 0x40  # and a flipped ciphertext bit
    _inject(lab, bytes(forged2))
    c = _wait_counter(b, sa_b.spi_in, "auth_failed", 2)
    assert c["auth_failed"] == 2 and c["packets_in"] == before["packets_in"]

    # an authentic packet (we hold the keys) whose inner source rA never negotiated
    out = EspOutbound(sa_a.spi_out, GCM128, sa_a.enc_key_out, b"")
    # ahead of rA's real sequence numbers but within the window, so rA's own packets still pass later
    out.seq = a.call(op="counters", spi_in=sa_a.spi_in)["counters"]["packets_out"] + 500
    inner = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 7, 0, 64, 17, 0,
                                  bytes([10, 9, 9, 9]), bytes([10, 2, 0, 10])) + bytes(8))
    cap_h = Capture(lab.hB, "eth0")
    _inject(lab, out.encapsulate(bytes(inner)))
    c = _wait_counter(b, sa_b.spi_in, "policy_dropped", 1)
    assert c["policy_dropped"] == 1
    assert not [f for f in cap_h.stop() if f[12:14] == b"\x08\x00" and f[26:30] == bytes([10, 9, 9, 9])]
    st = b.call(op="status")["status"]
    assert st["drops"]["policy_in"] == 1

    # outbound: a packet the router itself sends from its WAN address matches the route but not local_ts
    assert lab.ping(count=2, src_ns=lab.rA, src="192.0.2.1")["received"] == 0
    assert a.call(op="status")["status"]["drops"]["policy_out"] >= 2
    # the tunnel still works after all that
    assert lab.ping(count=3)["received"] == 3


def test_make_before_break_rekey_under_ping(lab: Lab) -> None:
    a, b = lab.start_engines()
    old_a, old_b = sa_pair(GCM128, reqid=7, spi_base=0x1000)
    new_a, new_b = sa_pair(GCM128, reqid=7, spi_base=0x2000)
    a.call(op="install", sa=sa_to_dict(old_a))
    b.call(op="install", sa=sa_to_dict(old_b))
    result: dict = {}
    pinger = threading.Thread(target=lambda: result.update(lab.ping(count=300, interval=0.01)))
    pinger.start()
    time.sleep(1.0)
    # CREATE_CHILD_SA order: the responder (rB) installs first, then the initiator (rA)
    b.call(op="install", sa=sa_to_dict(new_b))
    a.call(op="install", sa=sa_to_dict(new_a))
    time.sleep(0.5)
    b.call(op="remove", spi_in=old_b.spi_in)
    a.call(op="remove", spi_in=old_a.spi_in)
    pinger.join()
    lost = result["lost"]
    print(f"make-before-break: {result['received']}/{result['sent']} echo replies, lost seqs {lost}")
    assert len(lost) <= 2, result
    c_new = a.call(op="counters", spi_in=new_a.spi_in)["counters"]
    assert c_new["packets_out"] > 50 and c_new["packets_in"] > 50
    st = a.call(op="status")["status"]
    assert [s["spi_in"] for s in st["sas"]] == [new_a.spi_in]
    # routes survive the swap; removing the last SA of the reqid removes them
    assert "10.2.0.0/24" in nsx(lab.rA, "ip", "route").stdout
    a.call(op="remove", spi_in=new_a.spi_in)
    assert "10.2.0.0/24" not in nsx(lab.rA, "ip", "route").stdout
    assert replace(new_a) == new_a  # the SA handed over is untouched (frozen contract)


def test_close_removes_device_and_routes(lab: Lab) -> None:
    a, _ = lab.start_engines()
    sa_a, _ = sa_pair(GCM128)
    a.call(op="install", sa=sa_to_dict(sa_a))
    assert "ipsec0" in nsx(lab.rA, "ip", "link").stdout
    t0 = time.monotonic()
    a.close()
    assert time.monotonic() - t0 < 3, "closing must wake both blocked packet loops"
    assert a.p.returncode == 0
    assert "ipsec0" not in nsx(lab.rA, "ip", "link").stdout
    assert "10.2.0.0/24" not in nsx(lab.rA, "ip", "route").stdout


def test_byte_lifetimes_fire_soft_then_hard_and_hard_stops_traffic(lab: Lab) -> None:
    a, b = lab.start_engines()
    sa_a, sa_b = sa_pair(GCM128)
    sa_a = replace(sa_a, soft_lifetime_bytes=3000, hard_lifetime_bytes=9000)
    a.call(op="install", sa=sa_to_dict(sa_a))
    b.call(op="install", sa=sa_to_dict(sa_b))
    r = lab.ping(count=40, interval=0.02)  # 84-byte packets, both ways: ~6.7 kB by the end
    assert r["received"] == 40
    st = a.call(op="status")
    assert st["lifetime_events"] == [[sa_a.spi_in, False]]
    r = lab.ping(count=60, interval=0.02)
    st = a.call(op="status")
    assert st["lifetime_events"] == [[sa_a.spi_in, False], [sa_a.spi_in, True]]
    assert st["status"]["sas"][0]["expired"] is True
    assert r["received"] < 60
    assert lab.ping(count=3)["received"] == 0
    assert st["status"]["drops"]["expired"] >= 1


def test_longest_prefix_wins_between_overlapping_selectors(lab: Lab) -> None:
    a, b = lab.start_engines()
    wide_a, wide_b = sa_pair(GCM128, reqid=1, spi_base=0x1000)
    wide_a = replace(wide_a, remote_ts=("10.2.0.0/16",))
    wide_b = replace(wide_b, local_ts=("10.2.0.0/16",))
    narrow_a, narrow_b = sa_pair(GCM128, reqid=2, spi_base=0x2000)
    for sa in (wide_a, narrow_a):
        a.call(op="install", sa=sa_to_dict(sa))
    for sa in (wide_b, narrow_b):
        b.call(op="install", sa=sa_to_dict(sa))
    assert lab.ping(count=5)["received"] == 5
    narrow = a.call(op="counters", spi_in=narrow_a.spi_in)["counters"]
    wide = a.call(op="counters", spi_in=wide_a.spi_in)["counters"]
    assert narrow["packets_out"] == 5 and wide["packets_out"] == 0
    # without the /24 the /16 carries it
    a.call(op="remove", spi_in=narrow_a.spi_in)
    assert lab.ping(count=3)["received"] == 3
    assert a.call(op="counters", spi_in=wide_a.spi_in)["counters"]["packets_out"] == 3


def test_same_selectors_the_preferred_sa_carries_and_traffic_falls_back_when_it_goes(lab: Lab) -> None:
    # what a mesh shortcut does with the LAN's real prefix next to the hub tunnel that covers it too
    a, b = lab.start_engines()
    hub_a, hub_b = sa_pair(GCM128, reqid=1, spi_base=0x1000)
    short_a, short_b = sa_pair(GCM128, reqid=2, spi_base=0x2000)
    short_a = replace(short_a, preference=10)
    for sa in (short_a, hub_a):  # installed first or not, the preference decides
        a.call(op="install", sa=sa_to_dict(sa))
    for sa in (hub_b, short_b):
        b.call(op="install", sa=sa_to_dict(sa))
    assert lab.ping(count=5)["received"] == 5
    assert a.call(op="counters", spi_in=short_a.spi_in)["counters"]["packets_out"] == 5
    assert a.call(op="counters", spi_in=hub_a.spi_in)["counters"]["packets_out"] == 0
    assert nsx(lab.rA, "ip", "route", "show", "10.2.0.0/24").stdout.count("dev ipsec0") == 1  # one shared route
    a.call(op="remove", spi_in=short_a.spi_in)
    assert lab.ping(count=3)["received"] == 3
    assert a.call(op="counters", spi_in=hub_a.spi_in)["counters"]["packets_out"] == 3
    assert "10.2.0.0/24" in nsx(lab.rA, "ip", "route").stdout  # the hub's SA still needs the route


def test_everything_selector_keeps_esp_to_the_peer_off_the_tunnel(lab: Lab) -> None:
    a, b = lab.start_engines()
    sa_a, sa_b = sa_pair(GCM128)
    sa_a = replace(sa_a, remote_ts=("0.0.0.0/0",))
    sa_b = replace(sa_b, local_ts=("0.0.0.0/0",))
    a.call(op="install", sa=sa_to_dict(sa_a))
    b.call(op="install", sa=sa_to_dict(sa_b))
    routes = nsx(lab.rA, "ip", "route").stdout
    assert "default dev ipsec0" in routes
    assert "192.0.2.2 dev wan0" in routes  # the peer pinned to the underlay
    assert lab.ping(count=3)["received"] == 3
    a.close()
    assert "192.0.2.2 dev wan0" not in nsx(lab.rA, "ip", "route").stdout


def test_bad_sa_is_refused_and_leaves_nothing_behind(lab: Lab) -> None:
    a = EngineProc(lab.rA)
    lab.engines.append(a)
    # 10.99.0.1 is not an address of rA: the kernel refuses routes with it as source
    a.call(op="open", local_addr="192.0.2.1", route_src="10.99.0.1")
    sa_a, _ = sa_pair(GCM128)
    with pytest.raises(AssertionError, match="key material"):
        a.call(op="install", sa=sa_to_dict(replace(sa_a, enc_key_out=b"short")))
    with pytest.raises(AssertionError, match="route 10.2.0.0/24"):
        a.call(op="install", sa=sa_to_dict(sa_a))
    st = a.call(op="status")["status"]
    assert st["sa_count"] == 0
    assert "10.2.0.0/24" not in nsx(lab.rA, "ip", "route").stdout


def test_lowered_underlay_mtu_is_followed_and_gso_batches_fall_back(lab: Lab) -> None:
    """wan0 drops to MTU 1000 under running engines (what `vpnlab link set --mtu` does): the first
    UDP GSO batch of 1500-byte ESP packets is refused by the kernel, goes out one by one, and the
    engine shrinks ipsec0 to fit; TCP then completes, intact, with GSO still on."""
    import hashlib

    a, b = lab.start_engines()
    sa_a, sa_b = sa_pair(GCM128)
    a.call(op="install", sa=sa_to_dict(sa_a))
    b.call(op="install", sa=sa_to_dict(sa_b))
    assert a.call(op="status")["status"]["mtu"] == 1438
    for ns in (lab.rA, lab.rB):
        nsx(ns, "ip", "link", "set", "wan0", "mtu", "1000")
    blocks = 30000
    n, digest = transfer(lab, blocks)
    assert (n, digest) == (len(PATTERN) * blocks, hashlib.sha256(PATTERN * blocks).hexdigest())
    st = a.call(op="status")["status"]
    assert st["gso_too_big"] >= 1, st
    assert st["underlay_mtu"] == 1000 and st["mtu"] == 938  # 1000 - IP 20 - UDP 8 - ESP/GCM 32 - trailer 2
    assert st["offload"]["udp_gso"] is True
    assert lab.ping(count=3)["received"] == 3
