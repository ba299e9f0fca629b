"""New forwarded sessions in this router, from the kernel's conntrack events.

pyroute2 0.7's conntrack module can list and dump entries but does not subscribe to the
NFNLGRP_CONNTRACK_NEW multicast group, so we read `conntrack -E -e NEW` (conntrack-tools, in the
image) line by line, with a bounded line length. The kernel only tracks connections in a namespace
once a rule there uses conntrack: `ct_ruleset()` is that rule (it also counts new sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable

log = logging.getLogger("vpnlab_agent.mesh")

TABLE = "vpnlab_mesh_ct"
MAX_LINE = 4096
CONNTRACK_CMD = ("conntrack", "-E", "-e", "NEW", "-o", "id")
_SRC = re.compile(r"\bsrc=(\d{1,3}(?:\.\d{1,3}){3})\b")
_DST = re.compile(r"\bdst=(\d{1,3}(?:\.\d{1,3}){3})\b")


def parse_event(line: str) -> tuple[str, str] | None:
    """(original source, original destination) of one `conntrack -E` NEW line, else None."""
    if "[NEW]" not in line:
        return None
    src, dst = _SRC.search(line), _DST.search(line)
    if src is None or dst is None:
        return None
    return src.group(1), dst.group(1)


def ct_ruleset() -> str:
    """An nft script that makes the kernel track (and count) new forwarded sessions."""
    return (
        f"table ip {TABLE}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority -5; policy accept;\n"
        '    ct state new counter comment "new forwarded sessions"\n'
        "  }\n"
        "}\n"
    )


async def nft(script: str | None = None, *args: str, timeout: float = 10.0) -> str:
    """Run `nft -f -` with a script, or `nft ARGS`; the output, or RuntimeError with nft's message."""
    argv = ("nft", "-f", "-") if script is not None else ("nft", *args)
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(script.encode() if script is not None else None), timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args) or '-f -'}: {err.decode(errors='replace').strip()}")
    return out.decode()


class ConntrackWatcher:
    """Runs `conntrack -E -e NEW` and calls on_session(src, dst) for every new session."""

    def __init__(self, on_session: Callable[[str, str], None], cmd: tuple[str, ...] = CONNTRACK_CMD) -> None:
        self.on_session = on_session
        self.cmd = cmd
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.lines = 0
        self.too_long = 0

    async def start(self) -> None:
        await nft(ct_ruleset())
        self.proc = await asyncio.create_subprocess_exec(
            *self.cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, limit=MAX_LINE)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        reader = self.proc.stdout
        while True:
            try:
                line = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                self.too_long += 1  # a line beyond MAX_LINE: skip to the next newline
                with contextlib.suppress(Exception):
                    await reader.readuntil(b"\n")
                continue
            if not line:
                log.warning("conntrack event stream ended")
                return
            self.lines += 1
            ev = parse_event(line.decode(errors="replace"))
            if ev is not None:
                try:
                    self.on_session(*ev)
                except Exception:  # noqa: BLE001 - one bad event must not stop the watcher
                    log.exception("handling conntrack event")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 2.0)
        with contextlib.suppress(Exception):
            await nft(None, "delete", "table", "ip", TABLE)
