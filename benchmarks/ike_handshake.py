"""IKE_SA_INIT + IKE_AUTH latency per suite and per auth method (issues #3 and #12): goal <= 20 ms.

    .venv/bin/python benchmarks/ike_handshake.py [--rounds 40] [--json]

Auth methods: psk, cert-ecdsa (ECDSA P-256 certificates, RFC 7427 signatures), cert-rsa (RSA-2048),
cert-rsa-frag (RSA-2048 with fragment_size 576: both IKE_AUTH messages go as RFC 7383 fragments).
Certificates come from a lab CA made as deploy makes it (vpnlab.pki); both ends check the chain,
validity, identity and the issued certificate, exactly as in a lab.

(1) memory: two IkeEndpoints wired in memory (pure CPU: both sides' DH, key derivation, AUTH).
(2) udp: two IkeServices (the agent's asyncio adapter + the userspace ESP engine) in two network
    namespaces over a veth, timed by the initiator from connect() until its IKE SA is up — the
    child SA is installed into the engine by then. Needs root; skipped with the reason otherwise.
Prints median and p95 per suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpnlab_agent.config import IkeConfig, InterfaceConfig, NodeConfig, PeerConfig, PkiConfig
from vpnlab_agent.ike.certs import Credentials
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.ike.events import IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

GOAL_MS = 20.0
SUITES = [
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
    ("aes256gcm16-prfsha384-curve25519", "aes256gcm16"),
    ("aes128gcm16-prfsha256-modp2048", "aes128gcm16"),
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes128-sha256-modp3072", "aes128-sha256"),
]
AUTHS = ("psk", "cert-ecdsa", "cert-rsa", "cert-rsa-frag")
FRAG_SIZE = 576  # cert-rsa-frag: IPv4's minimum datagram; an RSA IKE_AUTH takes 3 fragments
A, B = "192.0.2.1", "192.0.2.2"


class Pki:
    """A CA and certificates for hub and br1 per key type, as PEM (vpnlab.pki, what deploy uses)."""

    def __init__(self) -> None:
        import datetime

        from cryptography.hazmat.primitives.serialization import Encoding

        from vpnlab.pki import issue, make_ca

        now = datetime.datetime.now(datetime.timezone.utc)
        ca, key = make_ca("vpnlab bench CA", now)
        self.ca = ca.public_bytes(Encoding.PEM)
        self.issued = {(name, kind): issue(ca, key, name, kind, now)
                       for name in ("hub", "br1") for kind in ("ecdsa-p256", "rsa-2048")}

    def credentials(self, me: str, peer: str, auth: str) -> Credentials | None:
        if auth == "psk":
            return None
        kind = "ecdsa-p256" if auth == "cert-ecdsa" else "rsa-2048"  # cert-rsa, cert-rsa-frag
        own, theirs = self.issued[(me, kind)], self.issued[(peer, kind)]
        return Credentials.from_pem(self.ca, own.cert_pem, own.key_pem, {peer: theirs.cert_pem})

    def files(self, tmp: Path, me: str, peer: str, auth: str) -> PkiConfig | None:
        if auth == "psk":
            return None
        kind = "ecdsa-p256" if auth == "cert-ecdsa" else "rsa-2048"  # cert-rsa, cert-rsa-frag
        d = tmp / f"{me}-{kind}"
        d.mkdir(exist_ok=True)
        (d / "ca.pem").write_bytes(self.ca)
        (d / "cert.pem").write_bytes(self.issued[(me, kind)].cert_pem)
        (d / "key.pem").write_bytes(self.issued[(me, kind)].key_pem)
        (d / "peer.pem").write_bytes(self.issued[(peer, kind)].cert_pem)
        return PkiConfig(str(d / "ca.pem"), str(d / "cert.pem"), str(d / "key.pem"))


def _auth(auth: str) -> str:
    return "psk" if auth == "psk" else "cert"


def _frag(auth: str) -> int:
    return FRAG_SIZE if auth.endswith("-frag") else 1280


def _utc() -> object:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def memory_round(ike: str, esp: str, auth: str = "psk", pki: Pki | None = None) -> float:
    a = _auth(auth)
    ca = IkeConfig(local_id="br1", psk="bench", ike_proposals=(ike,), esp_proposals=(esp,), auth=a,  # type: ignore[arg-type]
                   fragment_size=_frag(auth), peers=(PeerConfig("hub", "hub", B, True, ("10.1.0.0/24",), ("10.0.0.0/24",), auth=a),))  # type: ignore[arg-type]
    cb = IkeConfig(local_id="hub", psk="bench", ike_proposals=(ike,), esp_proposals=(esp,), auth=a,  # type: ignore[arg-type]
                   fragment_size=_frag(auth), peers=(PeerConfig("br1", "br1", None, False, ("10.0.0.0/24",), ("10.1.0.0/24",), auth=a),))  # type: ignore[arg-type]
    creds_a = pki.credentials("br1", "hub", auth) if pki else None
    creds_b = pki.credentials("hub", "br1", auth) if pki else None
    ea = IkeEndpoint(ca, A, force_encap=True, credentials=creds_a, wall_clock=_utc if creds_a else None)  # type: ignore[arg-type]
    eb = IkeEndpoint(cb, B, force_encap=False, credentials=creds_b, wall_clock=_utc if creds_b else None)  # type: ignore[arg-type]
    lb = Loopback(ea, eb)
    t0 = time.perf_counter()
    ea.connect("hub", 0.0)
    lb.deliver()
    elapsed = (time.perf_counter() - t0) * 1000
    if not any(isinstance(e, IkeSAUp) for e in lb.take_events(A)):
        raise RuntimeError(f"{ike}: handshake did not complete in memory")
    if auth.endswith("-frag") and not (ea.fragment_stats.reassembled and eb.fragment_stats.reassembled):
        raise RuntimeError(f"{ike} {auth}: IKE_AUTH was not fragmented")
    return elapsed


# --- two namespaces ---------------------------------------------------------------------------


def sh(*argv: str) -> None:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def node(name: str, public: str, lan: str, peer: str, peer_public: str | None, peer_lan: str, ike: str,
         esp: str, auth: str = "psk", pki: PkiConfig | None = None) -> NodeConfig:
    a = _auth(auth)
    peer_cert = str(Path(pki.ca_file).parent / "peer.pem") if pki else None
    return NodeConfig(
        lab="bench", name=name, role="branch" if peer_public else "hub", implementation="agent",
        public_address=public, interfaces=(InterfaceConfig("wan0", "wan", (f"{public}/24",)),),
        ike=IkeConfig(local_id=name, psk="bench", ike_proposals=(ike,), esp_proposals=(esp,), auth=a, pki=pki,  # type: ignore[arg-type]
                      fragment_size=_frag(auth),
                      peers=(PeerConfig(peer, peer, peer_public, False, (lan,), (peer_lan,), auth=a,  # type: ignore[arg-type]
                                        cert_file=peer_cert),)),
    )


class Runner:
    def __init__(self, ns: str, config: NodeConfig, tmp: Path, route_src: str) -> None:
        path = tmp / f"{config.name}.json"
        path.write_text(config.to_json())
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "vpnlab_agent.io.ike_serve", str(path),
             "--route-src", route_src],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.read()

    def read(self) -> dict:
        assert self.p.stdout
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("IKE service exited")
        return json.loads(line)

    def call(self, **cmd: object) -> dict:
        assert self.p.stdin
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        reply = self.read()
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply

    def close(self) -> None:
        try:
            self.call(op="stop")
            self.p.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.p.kill()
            self.p.wait()


def udp_rounds(rounds: int, pki: Pki) -> dict[tuple[str, str], list[float]]:
    tag = uuid.uuid4().hex[:6]
    na, nb = f"ikb{tag}-a", f"ikb{tag}-b"
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for ns in (na, nb):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", f"v{tag}a", "type", "veth", "peer", "name", f"v{tag}b")
        for ns, end, addr, lan in ((na, "a", A, "10.1.0.1/24"), (nb, "b", B, "10.0.0.1/24")):
            sh("ip", "link", "set", f"v{tag}{end}", "netns", ns)
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", f"v{tag}{end}")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", f"v{tag}{end}", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", lan, "dev", "lo")
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            for ike, esp, auth in combos():
                hub = Runner(nb, node("hub", B, "10.0.0.0/24", "br1", None, "10.1.0.0/24", ike, esp, auth,
                                      pki.files(tmp, "hub", "br1", auth)), tmp, "10.0.0.1")
                br = Runner(na, node("br1", A, "10.1.0.0/24", "hub", B, "10.0.0.0/24", ike, esp, auth,
                                     pki.files(tmp, "br1", "hub", auth)), tmp, "10.1.0.1")
                try:
                    br.call(op="handshake", peer="hub", timeout=10)  # warm-up: imports, first routes
                    results[(ike, auth)] = [br.call(op="handshake", peer="hub", timeout=10)["elapsed_ms"]
                                            for _ in range(rounds)]
                finally:
                    br.close()
                    hub.close()
    finally:
        for ns in (na, nb):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return results


def combos() -> list[tuple[str, str, str]]:
    """Every suite with a PSK, and every auth method with the default and the heaviest suite."""
    out = [(ike, esp, "psk") for ike, esp in SUITES]
    for auth in AUTHS[1:3]:
        out += [(ike, esp, auth) for ike, esp in SUITES if ike.endswith(("ecp256", "modp3072"))]
    return out + [(*SUITES[0], "cert-rsa-frag")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    rows: list[dict[str, object]] = []
    pki = Pki()
    for ike, esp, auth in combos():
        memory_round(ike, esp, auth, pki)  # warm-up
        ms = [memory_round(ike, esp, auth, pki) for _ in range(args.rounds)]
        rows.append({"mode": "memory", "suite": ike, "auth": auth, "rounds": len(ms),
                     "median_ms": statistics.median(ms), "p95_ms": pct(ms, 95)})
    skipped = None
    if os.geteuid() != 0:
        skipped = "udp: needs root for network namespaces"
    elif not os.path.exists("/dev/net/tun"):
        skipped = "udp: no /dev/net/tun for the userspace engine"
    else:
        for (ike, auth), ms in udp_rounds(args.rounds, pki).items():
            rows.append({"mode": "udp+netns", "suite": ike, "auth": auth, "rounds": len(ms),
                         "median_ms": statistics.median(ms), "p95_ms": pct(ms, 95)})
    for r in rows:
        r["goal_ms"] = GOAL_MS
        r["ok"] = float(r["p95_ms"]) <= GOAL_MS  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({"rows": rows, "skipped": skipped}, indent=2))
        return 0
    t = Table(title="IKE_SA_INIT + IKE_AUTH latency (goal <= 20 ms)")
    for col in ("mode", "suite", "auth", "rounds", "median ms", "p95 ms", "goal"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["mode"]), str(r["suite"]), str(r["auth"]), str(r["rounds"]), f"{r['median_ms']:.2f}",
                  f"{r['p95_ms']:.2f}", "ok" if r["ok"] else "MISSED")
    console = Console(width=130)
    console.print(t)
    if skipped:
        console.print(f"skipped: {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
