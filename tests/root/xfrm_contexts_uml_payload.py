"""Runs inside user-mode Linux (see test_xfrm_contexts_uml.py): per-network routing contexts on the
kernel XFRM engine, each context a VRF device, driven by the agent's own services.

Two routers (netns xa, xb, joined by the veth va <-> vb: 192.0.2.1 <-> 192.0.2.2) and three contexts
at each: corp (A 10.1.0.0/24, B 10.2.0.0/24), guest (the very same addresses as corp) and voice
(A 10.5.0.0/24, B 10.6.0.0/24). Each context LAN is a veth to a host namespace `<router>-<context>`
(router .1, host .10, each host answering "who are you" on UDP 7 with its name). Each router runs
what the agent builds for a per-network node (`agent.build_services`: the contexts service, then
the IKE service on the engine the kernel probe picks), with one IKE peer per context. Prints one
JSON line of facts.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import re
import socket
import sys
import time
import traceback
from typing import Any

from pyroute2 import netns

from tests.root.xfrm_uml_payload import OUTER, PING_PATTERN, PipeWorker, ping, sh, start_captures, stop_captures
from vpnlab_agent.config import IkeConfig, NodeConfig, PeerConfig
from vpnlab_agent.contexts.config import ContextConfig, ContextsConfig, Reach

# name, number (table 100 + n), LAN per router
CONTEXTS = (
    ("corp", 1, {"xa": "10.1.0.0/24", "xb": "10.2.0.0/24"}),
    ("guest", 2, {"xa": "10.1.0.0/24", "xb": "10.2.0.0/24"}),  # the same addresses as corp
    ("voice", 3, {"xa": "10.5.0.0/24", "xb": "10.6.0.0/24"}),
)
TABLE = {name: 100 + n for name, n, _ in CONTEXTS}
WHO_PORT = 7


def other(side: str) -> str:
    return "xb" if side == "xa" else "xa"


def host(side: str, context: str) -> str:
    return f"{side}-{context}"


def addr(cidr: str, last: int) -> str:
    return cidr.rsplit(".", 1)[0] + f".{last}"


def node_config(side: str) -> NodeConfig:
    peer = other(side)
    peers = tuple(
        PeerConfig(name=f"{peer}.{c}", remote_id=f"{c}.{peer}", address=OUTER[peer], initiate=side == "xa",
                   local_ts=(lans[side],), remote_ts=(lans[peer],), local_id=f"{c}.{side}")
        for c, _, lans in CONTEXTS
    )  # fmt: skip
    contexts = ContextsConfig(
        "per-network",
        tuple(ContextConfig(c, n, TABLE[c], (f"c-{c}0",), (lans[side],)) for c, n, lans in CONTEXTS),
        tuple(Reach(f"{peer}.{c}", c, (lans[side],), (lans[peer],)) for c, _, lans in CONTEXTS),
    )
    ike = IkeConfig(local_id=f"{side}.uml.test", psk="uml-contexts-psk", esp_proposals=("aes128gcm16",), peers=peers)
    return NodeConfig(lab="uml", name=side, role="branch", implementation="agent", public_address=OUTER[side],
                      interfaces=(), dataplane="auto", ike=ike, extensions={"contexts": contexts.to_dict()})


def setup() -> None:
    for ns in ("xa", "xb", *(host(s, c) for s in ("xa", "xb") for c, _, _ in CONTEXTS)):
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
           ns=ns, check=False)  # no router solicitations in the captures
    sh("ip", "link", "add", "va", "netns", "xa", "type", "veth", "peer", "name", "vb", "netns", "xb")
    for side, dev in (("xa", "va"), ("xb", "vb")):
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=side)
        sh("ip", "addr", "add", f"{OUTER[side]}/24", "dev", dev, ns=side)
        sh("ip", "link", "set", dev, "up", ns=side)
        for c, _, lans in CONTEXTS:
            # what the orchestrator and the agent's netconfig do before the services start
            h, lan = host(side, c), lans[side]
            sh("ip", "link", "add", f"c-{c}0", "netns", side, "type", "veth", "peer", "name", "eth0", "netns", h)
            sh("ip", "addr", "add", f"{addr(lan, 1)}/24", "dev", f"c-{c}0", ns=side)
            sh("ip", "link", "set", f"c-{c}0", "up", ns=side)
            sh("ip", "addr", "add", f"{addr(lan, 10)}/24", "dev", "eth0", ns=h)
            sh("ip", "link", "set", "eth0", "up", ns=h)
            sh("ip", "route", "add", "default", "via", addr(lan, 1), ns=h)


# ---- hosts: who answers ----------------------------------------------------------------------


def _who_server(ns: str, conn: Any) -> None:
    netns.setns(ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", WHO_PORT))
    conn.send("ready")
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(ns.encode() + b" " + data, peer)


def start_who_servers_in(ctx: Any, namespaces: list[str]) -> None:
    for ns in namespaces:
        a, b = ctx.Pipe()
        ctx.Process(target=_who_server, args=(ns, b), daemon=True).start()
        assert a.poll(10) and a.recv() == "ready"


def _asker(ns: str, dst: str, conn: Any) -> None:
    netns.setns(ns)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"who " + bytes.fromhex(PING_PATTERN), (dst, WHO_PORT))  # once: the counters are exact
    try:
        data, _ = s.recvfrom(2048)
        conn.send(data.split(b" ", 1)[0].decode())
    except TimeoutError:
        conn.send(None)


def ask(ns: str, dst: str) -> str | None:
    """The name of the host that answers dst's UDP 7 when asked from ns (None: no answer)."""
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=_asker, args=(ns, dst, b), daemon=True)
    proc.start()
    answer = a.recv() if a.poll(6) else "no-result"
    proc.join(2)
    return answer


# ---- routers: the agent's services ----------------------------------------------------------


def router_side(side: str, conn: Any) -> None:
    try:
        netns.setns(side)
        asyncio.run(_serve(side, conn))
    except Exception:
        conn.send(("error", traceback.format_exc()))


async def _serve(side: str, conn: Any) -> None:
    from vpnlab_agent.agent import build_services

    errors: list[str] = []
    services, engine = build_services(node_config(side), errors)
    if errors:
        raise RuntimeError("; ".join(errors))
    for svc in services:
        await svc.start()
    contexts, ike = services[0], services[1]
    conn.send(("ok", {"engine": engine.name, "mode": contexts.mode, "services": [s.name for s in services]}))
    loop = asyncio.get_running_loop()
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        try:
            if cmd == "wait_up":
                for c, _, _ in CONTEXTS:
                    await ike.wait_up(f"{other(side)}.{c}", arg)
                result: Any = None
            elif cmd == "wait_children":  # until IKE reports arg child SAs (a rekey settles)
                end = time.monotonic() + 10
                while len(ike.status()["child_sas"]) != arg and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                result = len(ike.status()["child_sas"])
            elif cmd == "status":
                result = {"ike": ike.status(), "engine": engine.status(), "contexts": contexts.status()}
            elif cmd == "rekey":
                result = await ike.rekey(arg, "child")
            elif cmd == "stop":
                for svc in reversed(services):
                    await svc.stop()
                engine.close()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(cmd)
            conn.send(("ok", result))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Router(PipeWorker):
    def __init__(self, ctx: Any, name: str) -> None:
        super().__init__(ctx, name, "agent services", router_side)
        self.info = self.started


# ---- what the kernel holds -------------------------------------------------------------------


def _blocks(text: str) -> list[str]:
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("src "):
            out.append(line)
        elif out:
            out[-1] += "\n" + line
    return out


def states(ns: str) -> list[dict[str, Any]]:
    """Each ESP state: spi, reqid, its lookup mark and the mark it sets (output-mark), as iproute2 shows them."""
    found = []
    for b in _blocks(sh("ip", "xfrm", "state", ns=ns).stdout):
        spi = re.search(r"spi (0x[0-9a-f]+)", b)
        mark = re.search(r"(?<!output-)mark (0x[0-9a-f]+/0x[0-9a-f]+)", b)
        smark = re.search(r"output-mark (0x[0-9a-f]+(?:/0x[0-9a-f]+)?)", b)
        found.append({"src": b.split()[1], "dst": b.split()[3], "spi": int(spi.group(1), 16) if spi else None,
                      "mark": mark.group(1) if mark else None, "set_mark": smark.group(1) if smark else None})
    return found


def policies(ns: str) -> list[dict[str, Any]]:
    found = []
    for b in _blocks(sh("ip", "xfrm", "policy", ns=ns).stdout):
        d = re.search(r"dir (\w+)", b)
        mark = re.search(r"mark (0x[0-9a-f]+/0x[0-9a-f]+)", b)
        ifid = re.search(r"if_id (0x[0-9a-f]+)", b)
        found.append({"src": b.split()[1], "dst": b.split()[3], "dir": d.group(1) if d else None,
                      "mark": mark.group(1) if mark else None, "if_id": ifid.group(1) if ifid else None})
    return found


def kernel(ns: str, contexts: tuple[str, ...] = tuple(TABLE)) -> dict[str, Any]:
    """What the kernel holds in router ns that the contexts and the engine may have added."""
    return {
        "states": states(ns), "policies": policies(ns),
        "rules": sh("ip", "rule", ns=ns).stdout,
        "vrfs": sh("ip", "-d", "-o", "link", "show", "type", "vrf", ns=ns).stdout,
        "tables": {c: sh("ip", "route", "show", "table", str(TABLE[c]), ns=ns, check=False).stdout for c in contexts},
        "main": sh("ip", "route", "show", "table", "main", ns=ns).stdout,
        "qdiscs": {c: sh("tc", "qdisc", "show", "dev", f"c-{c}0", ns=ns).stdout for c in contexts},
        "masters": {c: sh("ip", "-o", "link", "show", f"c-{c}0", ns=ns).stdout for c in contexts},
    }


def by_context(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The engine's SAs, by context (each context has exactly one after a settled rekey)."""
    out: dict[str, dict[str, Any]] = {}
    for sa in status["engine"]["sas"]:
        out.setdefault(sa["context"], sa)
    return out


FACTS: dict[str, Any] = {}  # what was found so far, printed with the error if one comes


def main() -> dict[str, Any]:
    facts = FACTS
    t0 = time.monotonic()
    setup()
    ctx = mp.get_context("fork")
    start_who_servers_in(ctx, [host(side, c) for side in ("xa", "xb") for c, _, _ in CONTEXTS])
    captures = start_captures(ctx)
    b = Router(ctx, "xb")  # responder first, so the initiator's first packet finds it
    a = Router(ctx, "xa")
    facts["routers"] = {"xa": a.info, "xb": b.info}
    t1 = time.monotonic()
    a("wait_up", 15)
    facts["children"] = {"xa": a("wait_children", 3), "xb": b("wait_children", 3)}
    facts["up_s"] = time.monotonic() - t1
    facts["kernel_up"] = {"xa": kernel("xa"), "xb": kernel("xb")}
    facts["status_up"] = a("status")

    # each context's traffic: a different number of packets per context, so the counters tell
    counts = {"corp": 3, "guest": 5, "voice": 7}
    facts["ping"] = {c: ping(host("xa", c), addr(lans["xb"], 10), count=counts[c]) for c, _, lans in CONTEXTS}
    facts["who"] = {c: ask(host("xa", c), addr(lans["xb"], 10)) for c, _, lans in CONTEXTS}
    facts["who_back"] = {c: ask(host("xb", c), addr(lans["xa"], 10)) for c, _, lans in CONTEXTS if c != "voice"}
    facts["counters"] = {"xa": by_context(a("status")), "xb": by_context(b("status"))}

    # isolation: another context's LAN (not an overlapping one: voice's, and corp's from voice)
    facts["cross"] = {
        "corp_to_voice_ping": ping(host("xa", "corp"), "10.6.0.10", count=2),
        "corp_to_voice_who": ask(host("xa", "corp"), "10.6.0.10"),
        "voice_to_corp_ping": ping(host("xa", "voice"), "10.2.0.10", count=2),
        "voice_to_corp_who": ask(host("xa", "voice"), "10.2.0.10"),
    }
    facts["counters_after_cross"] = {"xa": by_context(a("status")), "xb": by_context(b("status"))}

    # rekey one context's child SA: only its SPIs change, the others' stay; nothing old is left
    facts["rekey"] = a("rekey", "xb.guest")
    facts["children_after_rekey"] = {"xa": a("wait_children", 3), "xb": b("wait_children", 3)}
    time.sleep(0.5)
    facts["kernel_rekeyed"] = {"xa": kernel("xa"), "xb": kernel("xb")}
    facts["ping_rekeyed"] = ping(host("xa", "guest"), "10.2.0.10", count=4)
    facts["who_rekeyed"] = ask(host("xa", "guest"), "10.2.0.10")
    facts["counters_rekeyed"] = {"xa": by_context(a("status")), "xb": by_context(b("status"))}
    facts["contexts_status"] = a("status")["contexts"]

    facts["wire"] = stop_captures(captures)
    for side in (a, b):
        side("stop")
        side.proc.join(5)
    facts["kernel_closed"] = {"xa": kernel("xa"), "xb": kernel("xb")}
    facts["payload_s"] = time.monotonic() - t0
    return facts


if __name__ == "__main__":
    try:
        result = main()
        code = 0
    except Exception:
        result = {**FACTS, "error": traceback.format_exc()}
        code = 1
    print("RESULT " + json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(code)
