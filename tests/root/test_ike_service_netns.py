"""Two IkeServices over real UDP, each in its own network namespace with the real userspace engine.

    nsA [lan0 10.1.0.1/24 | wan0 192.0.2.1] ==== veth ==== [wan0 192.0.2.2 | lan0 10.2.0.1/24] nsB

Each side runs `python -m vpnlab_agent.io.ike_serve` (IkeService + UserspaceEngine, no agent).
The branch (A) initiates; we check both IKE and child SAs, traffic through the tunnel (a UDP echo
between the LAN addresses, which only the ESP engines can carry), a child rekey and an IKE rekey
with traffic afterwards, DELETE on stop, and a wrong PSK refused over the wire. Then the same against a real strongSwan
charon (kernel-libipsec) in namespace B, as responder and as initiator: SAs up, traffic through
charon's libipsec and our engine, rekeys started by either side, DPD, DELETE and re-initiation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig

from tests.root.charon import Charon

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

PY = sys.executable

ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 7))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(2048); s.sendto(data, addr)
"""

PROBE = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); s.settimeout(0.05)
count, got = int(sys.argv[3]), set()
for i in range(count):
    s.sendto(b"probe-%d" % i, (sys.argv[2], 7))
    time.sleep(0.02)
end = time.monotonic() + 3.0  # a slow echo under load is still an echo
while len(got) < count and time.monotonic() < end:
    try:
        got.add(s.recv(2048))
    except socket.timeout:
        pass
print(json.dumps({"ok": len(got & {b"probe-%d" % i for i in range(count)})}))
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def nsx(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv)


def node(name: str, public: str, lan: str, peer: str, peer_public: str | None, peer_lan: str,
         psk: str = "netns-psk", peer_id: str | None = None) -> NodeConfig:
    return NodeConfig(
        lab="ikens", name=name, role="branch" if peer_public else "hub", implementation="agent",
        public_address=public,
        interfaces=(InterfaceConfig("wan0", "wan", (f"{public}/24",)), InterfaceConfig("lan0", "lan", (lan,))),
        ike=IkeConfig(local_id=name, psk=psk, dpd_interval_s=5,
                      peers=(PeerConfig(peer, peer_id or peer, peer_public, peer_public is not None, (lan,), (peer_lan,)),)),
    )


class Runner:
    """One IkeService process in a namespace, driven over JSON lines."""

    def __init__(self, ns: str, config: NodeConfig, tmp: Path, route_src: str) -> None:
        path = tmp / f"{config.name}.json"
        path.write_text(config.to_json())
        self.log = open(tmp / f"{config.name}.log", "w")  # noqa: SIM115 - closed in close()
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns, PY, "-m", "vpnlab_agent.io.ike_serve", str(path), "--route-src", route_src],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.read().get("started"), "IKE service did not start"

    def read(self) -> dict:
        assert self.p.stdout
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError(f"IKE service exited with {self.p.wait()}")
        return json.loads(line)

    def call(self, **cmd: object) -> dict:
        assert self.p.stdin
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        reply = self.read()
        if not reply["ok"]:
            raise AssertionError(reply["error"])
        return reply

    def status(self) -> dict:
        return self.call(op="status")["status"]

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.call(op="stop")
                self.read()
                self.p.wait(timeout=10)
            except Exception:  # noqa: BLE001
                self.p.kill()
                self.p.wait()
        self.log.close()


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.b = f"ike{tag}-a", f"ike{tag}-b"
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.runners: list[Runner] = []

    def build(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            nsx(ns, "ip", "link", "set", "lo", "up")
        tmp = "v" + uuid.uuid4().hex[:10]
        sh("ip", "link", "add", tmp + "a", "type", "veth", "peer", "name", tmp + "b")
        for ns, end, addr, lan in ((self.a, "a", "192.0.2.1/24", "10.1.0.1/24"), (self.b, "b", "192.0.2.2/24", "10.2.0.1/24")):
            sh("ip", "link", "set", tmp + end, "netns", ns)
            nsx(ns, "ip", "link", "set", tmp + end, "name", "wan0")
            nsx(ns, "ip", "addr", "add", addr, "dev", "wan0")
            nsx(ns, "ip", "link", "set", "wan0", "up")
            # A LAN stand-in: one veth pair kept inside the namespace, the address on one end.
            nsx(ns, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p")
            nsx(ns, "ip", "addr", "add", lan, "dev", "lan0")
            nsx(ns, "ip", "link", "set", "lan0", "up")
            nsx(ns, "ip", "link", "set", "lan0p", "up")

    def runner(self, ns: str, config: NodeConfig, route_src: str) -> Runner:
        r = Runner(ns, config, self.tmp, route_src)
        self.runners.append(r)
        return r

    def echo_server(self) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", self.b, PY, "-c", ECHO, "10.2.0.1"],
                             stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout and p.stdout.readline().strip() == "ready"

    def probe(self, count: int = 5) -> int:
        r = nsx(self.a, PY, "-c", PROBE, "10.1.0.1", "10.2.0.1", str(count))
        return int(json.loads(r.stdout)["ok"])

    def destroy(self) -> None:
        for r in self.runners:
            r.close()
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces and TUN devices")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun on this host")
    lab = Lab(tmp_path)
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()


def test_two_services_bring_up_sas_and_carry_traffic(lab: Lab) -> None:
    hub = lab.runner(lab.b, node("hub", "192.0.2.2", "10.2.0.1/24", "br1", None, "10.1.0.0/24"), "10.2.0.1")
    br = lab.runner(lab.a, node("br1", "192.0.2.1", "10.1.0.1/24", "hub", "192.0.2.2", "10.2.0.0/24"), "10.1.0.1")
    up = br.call(op="wait_up", peer="hub", timeout=15)
    assert up["elapsed_ms"] < 15000
    sa, sb = br.status(), hub.status()
    assert [s["state"] for s in sa["ike_sas"]] == ["established"] == [s["state"] for s in sb["ike_sas"]]
    (ca,), (cb,) = sa["child_sas"], sb["child_sas"]
    assert ca["spi_in"] == cb["spi_out"] and ca["spi_out"] == cb["spi_in"]
    assert ca["local_ts"] == ["10.1.0.0/24"] and cb["local_ts"] == ["10.2.0.0/24"]
    assert ca["encap"] and sa["ike_sas"][0]["remote"] == "192.0.2.2:4500"

    lab.echo_server()
    assert lab.probe() == 5
    sa = br.status()
    assert sa["child_sas"][0]["packets_out"] >= 5 and sa["child_sas"][0]["packets_in"] >= 5

    # Child rekey (make-before-break), then traffic on the new SA only.
    old_spi = ca["spi_in"]
    assert br.call(op="rekey", peer="hub", what="child")["started"] == 1
    for _ in range(50):
        sa = br.status()
        if [c["spi_in"] for c in sa["child_sas"]] != [old_spi] and len(sa["child_sas"]) == 1:
            break
        subprocess.run(["sleep", "0.05"])
    (new,) = sa["child_sas"]
    assert new["spi_in"] != old_spi
    assert lab.probe() == 5
    assert br.status()["child_sas"][0]["packets_in"] >= 5

    # IKE rekey from the hub's side: the child stays, traffic keeps flowing.
    old_ike = sa["ike_sas"][0]["spi_i"]
    hub.call(op="rekey", peer="br1", what="ike")
    for _ in range(50):
        sa = br.status()
        if [s["spi_i"] for s in sa["ike_sas"]] not in ([old_ike], []) and len(sa["ike_sas"]) == 1:
            break
        subprocess.run(["sleep", "0.05"])
    assert len(sa["ike_sas"]) == 1 and sa["ike_sas"][0]["spi_i"] != old_ike
    assert not sa["ike_sas"][0]["initiator"]  # the hub started the rekey: it is the new SA's initiator
    assert [c["spi_in"] for c in sa["child_sas"]] == [new["spi_in"]]
    assert lab.probe() == 5

    # Stopping the branch DELETEs its SAs on the hub too.
    br.close()
    lab.runners.remove(br)
    assert hub.status()["ike_sas"] == [] and hub.status()["child_sas"] == []


def test_wrong_psk_is_refused_over_the_wire(lab: Lab) -> None:
    hub = lab.runner(lab.b, node("hub", "192.0.2.2", "10.2.0.1/24", "br1", None, "10.1.0.0/24"), "10.2.0.1")
    br = lab.runner(lab.a, node("br1", "192.0.2.1", "10.1.0.1/24", "hub", "192.0.2.2", "10.2.0.0/24",
                                psk="not-the-psk"), "10.1.0.1")
    with pytest.raises(AssertionError, match="TimeoutError"):
        br.call(op="wait_up", peer="hub", timeout=1.5)
    sb, sa = hub.status(), br.status()
    assert sb["ike_sas"] == [] and sb["child_sas"] == [] and sa["child_sas"] == []
    assert any("PSK mismatch" in e for e in sb["errors"])
    assert any("AUTHENTICATION_FAILED" in e for e in sa["errors"])


# --- against a real strongSwan charon -----------------------------------------------------------

NETNS_CHARON_PLUGINS = ("random nonce openssl aes sha1 sha2 hmac gcm gmp curve25519 kdf kernel-libipsec kernel-netlink "
                        "socket-default vici")

SWANCTL_CONF = """
connections {{
  vpn {{
    version = 2
    local_addrs = 192.0.2.2
    remote_addrs = 192.0.2.1
    proposals = aes128gcm16-prfsha256-ecp256
    dpd_delay = 2s
    local {{
      auth = psk
      id = hub.vpnlab
    }}
    remote {{
      auth = psk
      id = branch.vpnlab
    }}
    children {{
      net {{
        local_ts = 10.2.0.0/24
        remote_ts = 10.1.0.0/24
        esp_proposals = {esp}
      }}
    }}
  }}
}}
secrets {{
  ike-1 {{
    id-1 = hub.vpnlab
    id-2 = branch.vpnlab
    secret = "netns-psk"
  }}
}}
"""


@pytest.fixture
def charon(lab: Lab, esp: str) -> Iterator[Charon]:
    if not Charon.installed():
        pytest.skip("strongSwan (charon-systemd, swanctl) is not installed")
    c = Charon(lab.b, lab.tmp / "charon", SWANCTL_CONF.format(esp=esp), load=NETNS_CHARON_PLUGINS,
               options=("install_routes = yes",))
    try:
        yield c
    finally:
        c.close()


def wait_for(what: str, check: object, timeout: float = 10.0) -> object:
    import time

    end = time.monotonic() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def our_child(runner: Runner) -> dict | None:
    live = [c for c in runner.status()["child_sas"] if c["state"] == "installed"]
    return live[0] if len(live) == 1 else None


@pytest.mark.parametrize(("charon_role", "esp"), [("responder", "aes128gcm16"), ("initiator", "aes128gcm16"),
                                                 ("responder", "aes128gcm16-ecp256")])  # the last: PFS rekeys
def test_interop_with_strongswan(lab: Lab, charon: Charon, charon_role: str, esp: str) -> None:
    cfg = node("branch.vpnlab", "192.0.2.1", "10.1.0.1/24", "hub", "192.0.2.2" if charon_role == "responder" else None,
               "10.2.0.0/24", peer_id="hub.vpnlab")
    cfg = dataclasses.replace(cfg, ike=dataclasses.replace(cfg.ike, esp_proposals=(esp,)))  # type: ignore[arg-type]
    ours = lab.runner(lab.a, cfg, "10.1.0.1")
    if charon_role == "initiator":
        charon.swanctl("--initiate", "--child", "net", "--timeout", "10")
    wait_for("IKE SA with charon", lambda: [s for s in ours.status()["ike_sas"] if s["state"] == "established"])
    child = wait_for("child SA with charon", lambda: our_child(ours))
    assert child["encap"]  # type: ignore[index]
    sas = charon.swanctl("--list-sas")
    assert "ESTABLISHED" in sas and "INSTALLED" in sas and child["spi_in"] in sas  # type: ignore[index]

    lab.echo_server()
    assert lab.probe() == 5, charon.log()[-3000:]

    # strongSwan rekeys the child, then the IKE SA; we follow, and traffic keeps flowing.
    charon.swanctl("--rekey", "--child", "net")
    new = wait_for("child rekeyed by charon", lambda: (c := our_child(ours)) and c["spi_in"] != child["spi_in"] and c)
    assert lab.probe() == 5
    old_ike = [s["spi_i"] for s in ours.status()["ike_sas"]]
    charon.swanctl("--rekey", "--ike", "vpn")
    wait_for("IKE SA rekeyed by charon",
             lambda: [s["spi_i"] for s in ours.status()["ike_sas"] if s["state"] == "established"] not in ([], old_ike))
    assert our_child(ours)["spi_in"] == new["spi_in"]  # type: ignore[index]
    assert lab.probe() == 5

    # We rekey the child and the IKE SA; strongSwan follows.
    peer = "hub"
    ours.call(op="rekey", peer=peer, what="child")
    newer = wait_for("child rekeyed by us", lambda: (c := our_child(ours)) and c["spi_in"] != new["spi_in"] and c)
    ours.call(op="rekey", peer=peer, what="ike")
    subprocess.run(["sleep", "0.5"])
    sas = charon.swanctl("--list-sas")
    assert sas.count("ESTABLISHED") == 1 and newer["spi_in"] in sas  # type: ignore[index]
    assert lab.probe() == 5

    # DPD from charon every 2 s is answered: still up after a quiet spell.
    subprocess.run(["sleep", "5"])
    assert len([s for s in ours.status()["ike_sas"] if s["state"] == "established"]) == 1
    assert "ESTABLISHED" in charon.swanctl("--list-sas")

    # strongSwan deletes the IKE SA: we see it go.
    charon.swanctl("--terminate", "--ike", "vpn", "--timeout", "10")
    if charon_role == "initiator":
        wait_for("IKE SA deleted by charon", lambda: ours.status()["ike_sas"] == [])
        assert ours.status()["child_sas"] == []
    else:  # we are the branch that initiates: we notice and connect again (capped backoff)
        wait_for("re-initiated IKE SA", lambda: our_child(ours) and "ESTABLISHED" in charon.swanctl("--list-sas"),
                 timeout=15)
        assert lab.probe() == 5
