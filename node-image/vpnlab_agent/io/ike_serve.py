"""A standalone IKE service driven by JSON lines, for root tests and benchmarks: one IkeService
with the userspace engine and no agent around it.

    python -m vpnlab_agent.io.ike_serve CONFIG.json [--local-addr A] [--route-src S]
"""

from __future__ import annotations

import asyncio
import logging
import time

from vpnlab_agent.ike.endpoint import IkeError
from vpnlab_agent.io.ike_service import IkeService


async def _serve(config_path: str, local_addr: str | None, route_src: str | None) -> None:
    """Run one IkeService with the userspace engine; one JSON command per stdin line, one reply each.

    {"op": "wait_up", "peer", "timeout"} → {"elapsed_ms"} | {"op": "handshake", "peer", "timeout"}
    (initiate, time until the IKE SA is up, then terminate and wait until it is gone) |
    {"op": "status"} | {"op": "rekey", "peer", "what"} | {"op": "initiate"|"terminate", "peer"} |
    {"op": "stop"}
    """
    import json
    import sys

    from vpnlab_agent.config import load
    from vpnlab_agent.dataplane.userspace import UserspaceEngine

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    config = load(config_path)
    service = IkeService(config, UserspaceEngine(route_src=route_src), local_addr=local_addr)
    await service.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ok": True, "started": True}), flush=True)
    try:
        while line := await reader.readline():
            if not line.strip():
                continue
            cmd = json.loads(line)
            op, reply = cmd.get("op"), {"ok": True}
            try:
                if op == "status":
                    reply["status"] = service.status()
                elif op == "wait_up":
                    t0 = time.perf_counter()
                    await service.wait_up(cmd["peer"], cmd.get("timeout", 10))
                    reply["elapsed_ms"] = (time.perf_counter() - t0) * 1000
                elif op == "handshake":
                    t0 = time.perf_counter()
                    await service.initiate(cmd["peer"])
                    await service.wait_up(cmd["peer"], cmd.get("timeout", 10))
                    reply["elapsed_ms"] = (time.perf_counter() - t0) * 1000
                    await service.terminate(cmd["peer"])
                    end = time.monotonic() + cmd.get("timeout", 10)
                    while service.endpoint.status(service._now())["ike_sas"] and time.monotonic() < end:
                        await asyncio.sleep(0.005)
                elif op == "rekey":
                    reply.update(await service.rekey(cmd["peer"], cmd.get("what", "child")))
                elif op in ("initiate", "terminate"):
                    reply.update(await getattr(service, op)(cmd["peer"]))
                elif op == "stop":
                    break
                else:
                    raise IkeError(f"unknown op {op!r}")
            except (IkeError, asyncio.TimeoutError, KeyError) as e:
                reply = {"ok": False, "error": str(e) or type(e).__name__}
            print(json.dumps(reply), flush=True)
    finally:
        await service.stop()
        print(json.dumps({"ok": True, "stopped": True}), flush=True)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m vpnlab_agent.io.ike_serve")
    ap.add_argument("config", help="NodeConfig JSON")
    ap.add_argument("--local-addr", help="address for IKE (default: the config's public_address)")
    ap.add_argument("--route-src", help="source address for routes into the tunnel")
    args = ap.parse_args(argv)
    asyncio.run(_serve(args.config, args.local_addr, args.route_src))


if __name__ == "__main__":
    main()
