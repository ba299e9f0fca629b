"""The NAT device service: load the nftables rules at start, drop them at stop, and report the
live UDP mappings from conntrack in `ctl status` (inspect shows them)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.nat.rules import TABLE, NatSpec, parse_conntrack, render

log = logging.getLogger("vpnlab_agent.nat")

CMD_TIMEOUT_S = 5.0
MAX_REPORTED = 64  # mappings listed in the status; the count is always exact


async def _run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), CMD_TIMEOUT_S)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, "", f"{argv[0]} timed out"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class NatService:
    name = "nat"

    def __init__(self, config: NodeConfig) -> None:
        self.spec = NatSpec.from_extension(config.extensions.get("nat"))
        self.mappings: list[dict[str, Any]] = []
        self.errors: list[str] = []

    async def start(self) -> None:
        code, _, err = await _run(["nft", "-f", "-"], render(self.spec).encode())
        if code != 0:
            raise RuntimeError(f"nft: {err.strip().splitlines()[0] if err.strip() else 'failed'}")
        # Packets that crossed before the rules existed left un-NATed entries behind; their
        # retransmissions would keep matching them until they time out.
        await _run(["conntrack", "-F"])
        log.info("NAT %s up: %s behind %s, mappings idle out after %d s",
                 self.spec.type, self.spec.inside, self.spec.public, self.spec.mapping_timeout_s)

    async def stop(self) -> None:
        await _run(["nft", "delete", "table", "ip", TABLE])

    async def refresh(self) -> None:
        code, out, err = await _run(["conntrack", "-L", "-p", "udp"])
        if code == 0:
            self.mappings = [m for m in parse_conntrack(out) if m["public"].split(":")[0] == self.spec.public]
            self.errors = []
        else:
            self.errors = [f"conntrack: {err.strip().splitlines()[0] if err.strip() else 'failed'}"]

    def status(self) -> dict[str, Any]:
        return {
            "type": self.spec.type,
            "public": self.spec.public,
            "inside": self.spec.inside,
            "mapping_timeout_s": self.spec.mapping_timeout_s,
            "branches": [name for name, _ in self.spec.branches],
            "mapping_count": len(self.mappings),
            "mappings": self.mappings[:MAX_REPORTED],
            "errors": list(self.errors),
        }
