"""Runs inside user-mode Linux (see test_xfrm_uml.py): our IKEv2 service over the kernel XFRM engine.

Same two namespaces as xfrm_uml_payload.py, but nothing is hand-made: each side runs the agent's
IkeService (PSK, AES-GCM) with an XfrmEngine; xa initiates. The child SA IKE negotiates lands in the
kernel; ping crosses it; a child rekey swaps SPIs make-before-break; stopping removes everything.
Prints one JSON line of facts.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from typing import Any

from pyroute2 import netns

from tests.root.xfrm_uml_payload import (
    OUTER,
    PipeWorker,
    ping,
    setup_namespaces,
    sh,
    start_captures,
    stop_captures,
    xfrm_dump,
)
from vpnlab_agent.config import IkeConfig, NodeConfig, PeerConfig

LANS = {"xa": "10.1.0.0/24", "xb": "10.2.0.0/24"}
LAN_IP = {"xa": "10.1.0.1", "xb": "10.2.0.1"}


def node_config(side: str) -> NodeConfig:
    peer = "xb" if side == "xa" else "xa"
    ike = IkeConfig(
        local_id=f"{side}.uml.test", psk="uml-xfrm-psk",
        esp_proposals=("aes128gcm16",),
        peers=(PeerConfig(name=peer, remote_id=f"{peer}.uml.test", address=OUTER[peer], initiate=side == "xa",
                          local_ts=(LANS[side],), remote_ts=(LANS[peer],)),),
    )  # fmt: skip
    return NodeConfig(lab="uml", name=side, role="branch", implementation="agent",
                      public_address=OUTER[side], interfaces=(), ike=ike)


def service_side(side: str, conn: Any) -> None:
    """Child process: IkeService + XfrmEngine in the side's netns, driven by commands on the pipe."""
    try:
        netns.setns(side)
        asyncio.run(_serve(side, conn))
    except Exception:
        conn.send(("error", traceback.format_exc()))


async def _serve(side: str, conn: Any) -> None:
    from vpnlab_agent.dataplane.probe import select_engine
    from vpnlab_agent.io.ike_service import IkeService

    engine = select_engine("xfrm", route_src=LAN_IP[side])
    service = IkeService(node_config(side), engine)
    await service.start()
    conn.send(("ok", engine.name))
    loop = asyncio.get_running_loop()
    peer = "xb" if side == "xa" else "xa"
    while True:
        cmd, arg = await loop.run_in_executor(None, conn.recv)
        try:
            if cmd == "wait_up":
                t0 = time.perf_counter()
                await service.wait_up(peer, arg)
                result: Any = (time.perf_counter() - t0) * 1000
            elif cmd == "wait_children":  # until IKE reports arg child SAs (a rekey settles)
                end = time.monotonic() + 10
                while len(service.status()["child_sas"]) != arg and time.monotonic() < end:
                    await asyncio.sleep(0.05)
                result = len(service.status()["child_sas"])
            elif cmd == "status":
                result = {"ike": service.status(), "engine": engine.status()}
            elif cmd == "rekey":
                result = await service.rekey(peer, "child")
            elif cmd == "stop":
                await service.stop()
                conn.send(("ok", None))
                return
            else:
                raise ValueError(cmd)
            conn.send(("ok", result))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Side(PipeWorker):
    def __init__(self, ctx: Any, name: str) -> None:
        super().__init__(ctx, name, "IKE process", service_side)
        self.engine = self.started


def _spis(status: dict[str, Any]) -> list[int]:
    return sorted(s["spi_in"] for s in status["engine"]["sas"])


def main() -> dict[str, Any]:
    facts: dict[str, Any] = {}
    setup_namespaces()
    ctx = mp.get_context("fork")
    captures = start_captures(ctx)

    b = Side(ctx, "xb")  # responder first, so the initiator's first packet finds it
    a = Side(ctx, "xa")
    facts["engines"] = [a.engine, b.engine]
    facts["ike_up_ms"] = a("wait_up", 10)
    facts["children_a"] = a("wait_children", 1)
    facts["children_b"] = b("wait_children", 1)
    facts["before"] = {"a": a("status"), "b": b("status")}
    facts["ping"] = ping("xa", "10.2.0.1")
    facts["ping_back"] = ping("xb", "10.1.0.1")
    facts["after_ping"] = a("status")

    facts["rekey"] = a("rekey")
    facts["children_after_rekey_a"] = a("wait_children", 1)
    facts["children_after_rekey_b"] = b("wait_children", 1)
    time.sleep(0.3)
    facts["after_rekey"] = {"a": a("status"), "b": b("status")}
    facts["kernel_after_rekey"] = xfrm_dump("xa")
    facts["ping_after_rekey"] = ping("xa", "10.2.0.1")

    facts["wire"] = stop_captures(captures)
    for side in (a, b):
        side("stop")
        side.proc.join(5)
    facts["after_stop"] = {ns: xfrm_dump(ns) for ns in OUTER}
    facts["spis"] = {"before": _spis(facts["before"]["a"]), "after": _spis(facts["after_rekey"]["a"])}
    return facts


if __name__ == "__main__":
    try:
        result = main()
        code = 0
    except Exception:
        result = {"error": traceback.format_exc()}
        code = 1
    print("RESULT " + json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(code)
