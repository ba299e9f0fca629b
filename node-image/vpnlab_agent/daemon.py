"""A third-party daemon the agent runs as its child (charon, pluto, keepalived).

Its output becomes the agent's log lines, under the daemon's own name ("charon: ..."); an exit the
agent did not ask for is recorded as an error (readiness reads it) and reported to the owner; stop
is SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

MAX_LOG_LINE = 16 * 1024


class Daemon:
    def __init__(self, name: str, on_exit: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.log = logging.getLogger(f"vpnlab_agent.{name}")
        self.errors: list[str] = []
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self, *argv: str, env: dict[str, str] | None = None) -> None:
        self._stopping = False
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, limit=MAX_LOG_LINE,
        )  # fmt: skip
        self._pump = asyncio.create_task(self._pump_log(self._proc))

    async def _pump_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:
                # A line over MAX_LOG_LINE: readline has already dropped it (or its head, when the
                # rest is still on its way). Reading on to the next newline here would also throw
                # away the following, ordinary line.
                self.log.warning("dropped a %s log line longer than %d bytes", self.name, MAX_LOG_LINE)
                continue
            if not line:
                break
            if text := line.decode(errors="replace").rstrip():
                self.log.info("%s", text)
        code = await proc.wait()
        if not self._stopping:
            self.errors.append(f"{self.name} exited with code {code}")
            self.log.error("%s exited unexpectedly with code %s", self.name, code)
            if self._on_exit is not None:
                self._on_exit(code)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s; waits for the last log lines."""
        self._stopping = True
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                self.log.warning("%s ignored SIGTERM for %g s; killing it", self.name, grace_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 2.0)
        self._proc = None
