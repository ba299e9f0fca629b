"""LibreswanService: pluto as the agent's child, with the config the orchestrator rendered.

start: probe whether this kernel takes an ESP state (pluto's data plane is the kernel's XFRM only;
without ESP it negotiates IKE but cannot install a child SA), start pluto in the foreground with its
log on stderr (its lines become ours, as "pluto"); pluto loads the conns of ipsec.conf itself and
starts those with auto=start. Status reads `whack --status` (whack.py). stop: SIGTERM; pluto
deletes its SAs (peers get DELETEs) and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.daemon import Daemon

from vpnlab_libreswan.whack import parse_status

log = logging.getLogger("vpnlab_agent.libreswan")

CTL_WAIT_S = 20.0
STOP_GRACE_S = 5.0


class LibreswanError(Exception):
    """pluto could not be started or configured; one line."""


@dataclass(frozen=True)
class LibreswanPaths:
    config: str = "/etc/ipsec.conf"
    secrets: str = "/etc/ipsec.secrets"
    nssdir: str = "/var/lib/ipsec/nss"
    rundir: str = "/run/pluto"
    pluto: str = "/usr/libexec/ipsec/pluto"
    whack: str = "/usr/libexec/ipsec/whack"

    @property
    def ctlsocket(self) -> str:
        return f"{self.rundir}/pluto.ctl"


def conn_names(ipsec_conf: str, config: NodeConfig) -> tuple[list[str], list[str]]:
    """(every conn in ipsec.conf, the conns this node initiates: its peers it starts IKE with)."""
    conns = [line.split()[1] for line in ipsec_conf.splitlines()
             if line.startswith("conn ") and len(line.split()) == 2]
    starts = {p.name for p in config.ike.peers if p.initiate} if config.ike else set()
    return conns, [c for c in conns if c in starts]


class LibreswanService:
    name = "libreswan"
    dataplane = "kernel-xfrm (pluto)"

    def __init__(self, config: NodeConfig, paths: LibreswanPaths | None = None) -> None:
        self.config = config
        self.paths = paths or LibreswanPaths()
        self.conns: list[str] = []
        self.initiators: list[str] = []
        self.esp_problem: str | None = None
        self.pluto = Daemon("pluto")
        self._ike_sas: list[dict[str, Any]] = []
        self._child_sas: list[dict[str, Any]] = []
        self._connections: dict[str, dict[str, Any]] = {}
        self._states: list[str] = []

    async def _whack(self, *args: str, timeout: float = 10.0) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            self.paths.whack, "--ctlsocket", self.paths.ctlsocket, *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise LibreswanError(f"whack {' '.join(args)} did not answer within {timeout:g} s") from None
        return proc.returncode or 0, out.decode(errors="replace")

    async def start(self) -> None:
        from vpnlab_agent.dataplane.probe import esp_probe_error

        self.esp_problem = await asyncio.to_thread(esp_probe_error)
        if self.esp_problem:
            log.warning("no kernel ESP (%s): pluto can negotiate IKE here but install no child SA", self.esp_problem)
        with open(self.paths.config, encoding="utf-8") as f:
            self.conns, self.initiators = conn_names(f.read(), self.config)
        os.makedirs(self.paths.rundir, exist_ok=True)
        for stale in ("pluto.ctl", "pluto.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.paths.rundir}/{stale}")
        await self.pluto.start(
            self.paths.pluto, "--nofork", "--stderrlog", "--config", self.paths.config,
            "--secretsfile", self.paths.secrets, "--nssdir", self.paths.nssdir, "--rundir", self.paths.rundir,
        )  # fmt: skip
        log.info("pluto started (pid %d)", self.pluto.pid)
        await self._wait_ctl()
        await self._wait_conns()

    async def _wait_ctl(self) -> None:
        deadline = time.monotonic() + CTL_WAIT_S
        while time.monotonic() < deadline:
            if self.pluto.returncode is not None:
                raise LibreswanError(f"pluto exited with code {self.pluto.returncode} before opening its control socket")
            if os.path.exists(self.paths.ctlsocket):
                code, _ = await self._whack("--status")
                if code == 0:
                    return
            await asyncio.sleep(0.1)
        raise LibreswanError(f"pluto's control socket {self.paths.ctlsocket} did not answer within {CTL_WAIT_S:g} s")

    async def _wait_conns(self) -> None:
        """pluto 4.10 started with --config loads every conn of the file itself and starts those
        with auto=start (an addconn on top replaced the conn and killed its first IKE_SA_INIT):
        wait until whack lists them all."""
        deadline = time.monotonic() + CTL_WAIT_S
        missing = list(self.conns)
        while time.monotonic() < deadline:
            _, text = await self._whack("--status")
            listed, *_ = parse_status(text, self.conns)
            missing = [c for c in self.conns if c not in listed]
            if not missing:
                log.info("pluto loaded %s", ", ".join(self.conns) or "no conns")
                return
            await asyncio.sleep(0.2)
        raise LibreswanError(f"pluto did not load conn {', '.join(missing)} within {CTL_WAIT_S:g} s")

    async def refresh(self) -> None:
        if not self.pluto.running:
            return
        _, text = await self._whack("--status")
        self._connections, self._ike_sas, self._child_sas, self._states = parse_status(text, self.conns)

    def status(self) -> dict[str, Any]:
        return {
            "running": self.pluto.running,
            "pid": self.pluto.pid,
            "kernel_esp": self.esp_problem is None,
            "kernel_esp_problem": self.esp_problem,
            "connections": self._connections,
            "states": self._states,  # pluto's own lines, as `whack --status` prints them
            "ike_sas": self._ike_sas,
            "child_sas": self._child_sas,
            "errors": list(self.pluto.errors),
        }

    async def initiate(self, peer: str) -> dict[str, Any]:
        code, text = await self._whack("--name", peer, "--initiate", "--asynchronous")
        return {"peer": peer, "ok": code == 0, "output": text.strip()}

    async def terminate(self, peer: str) -> dict[str, Any]:
        code, text = await self._whack("--name", peer, "--terminate")
        return {"peer": peer, "ok": code == 0, "output": text.strip()}

    async def stop(self) -> None:
        if self.pluto.pid is None:
            return
        await self.pluto.stop(STOP_GRACE_S)
        log.info("pluto stopped")
