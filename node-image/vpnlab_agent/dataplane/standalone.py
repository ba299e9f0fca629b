"""The userspace engine as a standalone process driven by JSON lines, without IKE (tests, benchmarks):

    python3 -m vpnlab_agent.dataplane.standalone
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from vpnlab_agent.dataplane.base import NATT_PORT, EngineError
from vpnlab_agent.dataplane.userspace import UserspaceEngine
from vpnlab_agent.esp.trailer import trailer_from_dict
from vpnlab_agent.sa import ChildSA, EspAlgorithm

def sa_to_dict(sa: ChildSA) -> dict[str, Any]:
    d = dataclasses.asdict(sa)
    for k in ("enc_key_in", "enc_key_out", "integ_key_in", "integ_key_out"):
        d[k] = d[k].hex()
    d["trailer"] = sa.trailer.describe()
    return d


def sa_from_dict(d: dict[str, Any]) -> ChildSA:
    d = dict(d)
    d["algorithm"] = EspAlgorithm(**d["algorithm"])
    for k in ("enc_key_in", "enc_key_out", "integ_key_in", "integ_key_out"):
        d[k] = bytes.fromhex(d[k])
    d["local_ts"], d["remote_ts"] = tuple(d["local_ts"]), tuple(d["remote_ts"])
    if "trailer" in d:
        d["trailer"] = trailer_from_dict(d["trailer"])
    return ChildSA(**d)


def serve(stdin: Any, stdout: Any) -> None:
    """One JSON command per line in, one JSON reply per line out.

    {"op": "open", "local_addr": ..., "route_src": ..., "port": 4500} | {"op": "install", "sa": {...}}
    | {"op": "remove", "spi_in": n} | {"op": "counters", "spi_in": n} | {"op": "status"} | {"op": "close"}
    """
    engine: UserspaceEngine | None = None
    ike_seen: list[int] = [0]
    lifetime_events: list[list[int | bool]] = []

    def on_ike(msg: bytes, addr: tuple[str, int]) -> None:
        ike_seen[0] += 1

    def on_lifetime(spi_in: int, hard: bool) -> None:
        if len(lifetime_events) < 1000:
            lifetime_events.append([spi_in, hard])

    for line in stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        reply: dict[str, Any] = {"ok": True}
        try:
            if op == "open":
                engine = UserspaceEngine(route_src=cmd.get("route_src"), on_lifetime=on_lifetime,
                                         offload=cmd.get("offload", True),
                                         tx_thread=cmd.get("tx_thread", True))
                engine.open(cmd["local_addr"], on_ike, cmd.get("port", NATT_PORT))
            elif engine is None:
                raise EngineError("engine not open")
            elif op == "install":
                engine.install(sa_from_dict(cmd["sa"]))
            elif op == "remove":
                engine.remove(cmd["spi_in"])
            elif op == "counters":
                reply["counters"] = dataclasses.asdict(engine.counters(cmd["spi_in"]))
            elif op == "status":
                reply["status"] = engine.status()
                reply["ike_seen"] = ike_seen[0]
                reply["lifetime_events"] = list(lifetime_events)
            elif op == "close":
                engine.close()
                stdout.write(json.dumps(reply) + "\n")
                stdout.flush()
                return
            else:
                raise EngineError(f"unknown op {op!r}")
        except EngineError as e:
            reply = {"ok": False, "error": str(e)}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
    if engine is not None:
        engine.close()


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    serve(sys.stdin, sys.stdout)
