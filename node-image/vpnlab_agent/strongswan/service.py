"""StrongswanService: charon-systemd as the agent's child, configured from the node config.

start: render swanctl.conf + strongswan.conf, start charon (its log lines become ours, as
"charon"), wait for the VICI socket, `swanctl --load-all`. Status, rekey, initiate and terminate
speak VICI directly. stop: terminate every IKE SA (so peers get DELETEs), then SIGTERM charon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vpnlab_agent.config import NodeConfig
from vpnlab_agent.daemon import Daemon
from vpnlab_agent.strongswan.render import (
    VICI_SOCKET,
    forwardable_ts,
    render_strongswan_conf,
    render_swanctl,
)
from vpnlab_agent.strongswan.vici import Message, Vici, ViciError

log = logging.getLogger("vpnlab_agent.strongswan")

VICI_WAIT_S = 20.0
# charon's start_action = start tries once: if the peer answered before it had loaded its own
# config (NO_PROPOSAL_CHOSEN) or was not up yet, nothing tries again. The keeper re-initiates
# peers we initiate to whenever they have no IKE SA, with a capped backoff.
KEEP_CHECK_S = 5.0
KEEP_FIRST_RETRY_S = 2.0
KEEP_MAX_RETRY_S = 30.0
LOAD_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
FAREWELL_S = 2.5  # DELETEs to peers on stop; with STOP_GRACE_S within the agent's stop timeout


class StrongswanError(Exception):
    """charon could not be started or configured, or refused a command; one line."""


@dataclass(frozen=True)
class StrongswanPaths:
    strongswan_conf: str = "/etc/strongswan.conf"
    swanctl_conf: str = "/etc/swanctl/swanctl.conf"
    vici_socket: str = VICI_SOCKET
    charon: str = "/usr/sbin/charon-systemd"
    swanctl: str = "/usr/sbin/swanctl"
    routing_table: int = 220


def _write(path: str, text: str, mode: int = 0o600) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Written in place (not tmp+rename): a bind-mounted file must stay the same inode.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)


# strongSwan's algorithm names -> the names our own IKE service reports, so that `inspect` shows
# one vocabulary whichever implementation a node runs (unknown names pass through lower-cased).
_IKE_ENCR = {"AES_GCM_16": "aes{bits}gcm16", "AES_CBC": "aes{bits}"}
_IKE_NAMES = {
    "HMAC_SHA2_256_128": "sha256", "HMAC_SHA2_384_192": "sha384", "HMAC_SHA2_512_256": "sha512",
    "PRF_HMAC_SHA2_256": "prfsha256", "PRF_HMAC_SHA2_384": "prfsha384", "PRF_HMAC_SHA2_512": "prfsha512",
    "MODP_2048": "modp2048", "MODP_3072": "modp3072", "ECP_256": "ecp256", "ECP_384": "ecp384",
    "CURVE_25519": "curve25519",
}
_ESP_ENCR = {"AES_GCM_16": "aes-gcm-16", "AES_CBC": "aes-cbc"}
_ESP_INTEG = {"HMAC_SHA2_256_128": "hmac-sha256-128"}


def ike_algorithms(sa: Message) -> str:
    encr = sa.get("encr-alg", "?")
    parts = [_IKE_ENCR.get(encr, encr.lower()).format(bits=sa.get("encr-keysize", ""))]
    for key in ("integ-alg", "prf-alg", "dh-group"):
        if sa.get(key):
            parts.append(_IKE_NAMES.get(sa[key], sa[key].lower()))
    return "-".join(parts)


def esp_algorithm(child: Message) -> str:
    encr = child.get("encr-alg", "?")
    alg = f"{_ESP_ENCR.get(encr, encr.lower())}-{child.get('encr-keysize', '?')}"
    if child.get("integ-alg"):
        alg += "-" + _ESP_INTEG.get(child["integ-alg"], child["integ-alg"].lower())
    return alg


def _endpoint(host: Any, port: Any) -> str | None:
    return f"{host}:{port}" if host and port else host


def ike_sa_status(name: str, sa: Message) -> dict[str, Any]:
    return {
        "peer": name,
        "state": str(sa.get("state", "unknown")).lower(),
        "local": _endpoint(sa.get("local-host"), sa.get("local-port")),
        "remote": _endpoint(sa.get("remote-host"), sa.get("remote-port")),
        "initiator": sa.get("initiator") == "yes",
        "algorithms": ike_algorithms(sa),
        "age_s": _int(sa.get("established")),
        "spi_i": sa.get("initiator-spi"),
        "spi_r": sa.get("responder-spi"),
        "local_id": sa.get("local-id"),
        "remote_id": sa.get("remote-id"),
        "encap": sa.get("nat-any") == "yes" or sa.get("local-port") == "4500",
        # what charon's NAT-D found, in the agent's shape (ike/session.py)
        "nat": {"local": sa.get("nat-local") == "yes", "remote": sa.get("nat-remote") == "yes",
                "encap": sa.get("nat-any") == "yes" or sa.get("local-port") == "4500"},
        "rekey_in_s": _int(sa.get("rekey-time")),
    }


def child_sa_status(peer: str, child: Message) -> dict[str, Any]:
    return {
        "peer": peer,
        "name": child.get("name"),
        "state": str(child.get("state", "unknown")).lower(),
        "local_ts": list(child.get("local-ts", [])),
        "remote_ts": list(child.get("remote-ts", [])),
        "spi_in": child.get("spi-in"),
        "spi_out": child.get("spi-out"),
        "algorithm": esp_algorithm(child),
        "bytes_in": _int(child.get("bytes-in")),
        "bytes_out": _int(child.get("bytes-out")),
        "packets_in": _int(child.get("packets-in")),
        "packets_out": _int(child.get("packets-out")),
        "age_s": _int(child.get("install-time")),
        "reqid": _int(child.get("reqid")),
        "encap": child.get("encap") == "yes",
    }


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_list_sas(events: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """VICI list-sa events -> (ike_sas, child_sas) in the agent's status format."""
    ike_sas: list[dict[str, Any]] = []
    child_sas: list[dict[str, Any]] = []
    for event in events:
        for name, sa in event.items():
            if not isinstance(sa, dict):
                continue
            ike_sas.append(ike_sa_status(name, sa))
            children = sa.get("child-sas", {})
            if isinstance(children, dict):
                for child in children.values():
                    if isinstance(child, dict):
                        child_sas.append(child_sa_status(name, child))
    return ike_sas, child_sas


def esp_backend(preference: str, probe: Callable[[], str | None] | None = None) -> bool:
    """True: charon must do ESP itself (kernel-libipsec); False: the kernel's XFRM can.

    Decided like the agent's own engines: "userspace" forces libipsec, "xfrm" requires kernel ESP,
    "auto" tries the kernel (a throwaway ESP state) and falls back to libipsec.
    """
    if preference not in ("auto", "userspace", "xfrm"):
        raise StrongswanError(f"unknown data plane {preference!r} (choose auto, userspace or xfrm)")
    if preference == "userspace":
        return True
    if probe is None:
        from vpnlab_agent.dataplane.probe import esp_probe_error as probe
    why_not = probe()
    if why_not is None:
        return False
    if preference == "xfrm":
        raise StrongswanError(f"data plane 'xfrm' needs kernel ESP, but {why_not}")
    log.info("kernel ESP unusable (%s): charon does ESP itself (kernel-libipsec)", why_not)
    return True


class StrongswanService:
    name = "strongswan"

    def __init__(self, config: NodeConfig, paths: StrongswanPaths | None = None) -> None:
        self.config = config
        self.paths = paths or StrongswanPaths()
        self.libipsec = True  # decided in start(), by probing the kernel
        self.charon = Daemon("charon")
        self._ike_sas: list[dict[str, Any]] = []
        self._child_sas: list[dict[str, Any]] = []
        self._errors: list[str] = []  # ours (VICI); charon's exit is in self.charon.errors
        self._loaded = False
        self._keeper: asyncio.Task[None] | None = None
        self._held: set[str] = set()  # terminated by the operator: the keeper leaves them down
        self.peers = tuple(p.name for p in config.ike.peers) if config.ike else ()
        self.initiators = tuple(p.name for p in config.ike.peers if p.initiate) if config.ike else ()

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "STRONGSWAN_CONF": self.paths.strongswan_conf, "SWANCTL_DIR": self.swanctl_dir}

    @property
    def dataplane(self) -> str:
        return "strongswan-libipsec" if self.libipsec else "strongswan-kernel"

    @property
    def swanctl_dir(self) -> str:
        return os.path.dirname(self.paths.swanctl_conf)

    def render(self) -> None:
        _write(self.paths.swanctl_conf, render_swanctl(self.config, libipsec=self.libipsec))
        if self.libipsec and self.config.ike is not None:
            for peer in self.config.ike.peers:
                if dropped := forwardable_ts(self.config, peer.local_ts)[1]:
                    log.warning("towards %s, kernel-libipsec cannot carry %s (no address of ours in it; "
                                "strongSwan 5.9.8, fixed in 5.9.12): left out of the selectors",
                                peer.name, ", ".join(dropped))
        ike = self.config.ike
        if ike is not None and ike.auth == "cert" and ike.pki is not None:
            # swanctl takes private keys only from its own private/ folder, never from a path in
            # swanctl.conf; certificates it takes from the absolute paths the config names.
            with open(ike.pki.key_file, encoding="ascii") as f:
                _write(os.path.join(self.swanctl_dir, "private", "vpnlab.pem"), f.read())
        _write(self.paths.strongswan_conf, render_strongswan_conf(
            self.config, vici_socket=self.paths.vici_socket, routing_table=self.paths.routing_table,
            libipsec=self.libipsec,
        ), mode=0o644)

    async def start(self) -> None:
        self.libipsec = await asyncio.to_thread(esp_backend, self.config.dataplane)
        self.render()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.paths.vici_socket)  # stale from an earlier charon
        await self.charon.start(self.paths.charon, env=self.env)
        log.info("charon started (pid %d)", self.charon.pid)
        await self._wait_vici()
        await self._load_all()
        self._loaded = True
        if self.initiators:
            self._keeper = asyncio.create_task(self._keep_up())

    def _has_ike_sa(self, peer: str) -> bool:
        with Vici(self.paths.vici_socket, 10.0) as vici:
            events, _ = vici.streamed("list-sas", "list-sa", {"ike": peer, "noblock": "yes"})
        return any(peer in event for event in events)

    async def _keep_up(self) -> None:
        retry = dict.fromkeys(self.initiators, KEEP_FIRST_RETRY_S)
        due = dict.fromkeys(self.initiators, time.monotonic() + KEEP_FIRST_RETRY_S)
        while True:
            await asyncio.sleep(1.0)
            if not self.charon.running:
                return
            for peer in self.initiators:
                now = time.monotonic()
                if peer in self._held or now < due[peer]:
                    continue
                try:
                    up = await asyncio.to_thread(self._has_ike_sa, peer)
                    if up:
                        retry[peer], due[peer] = KEEP_FIRST_RETRY_S, now + KEEP_CHECK_S
                        continue
                    log.info("no IKE SA with %s: initiating again (next try in %g s)", peer, retry[peer])
                    # timeout -1: charon answers at once, the exchange goes on in the background
                    await asyncio.to_thread(
                        self._vici_request, "initiate", {"child": peer, "timeout": "-1", "init-limits": "no"}
                    )
                except (ViciError, OSError) as exc:
                    log.warning("keeping %s up: %s", peer, exc)
                due[peer] = now + retry[peer]
                retry[peer] = min(retry[peer] * 2, KEEP_MAX_RETRY_S)

    async def _wait_vici(self) -> None:
        deadline = time.monotonic() + VICI_WAIT_S
        while time.monotonic() < deadline:
            if self.charon.returncode is not None:
                raise StrongswanError(f"charon exited with code {self.charon.returncode} before opening VICI")
            if os.path.exists(self.paths.vici_socket):
                try:
                    await asyncio.to_thread(self._vici_request, "version")
                    return
                except ViciError:
                    pass
            await asyncio.sleep(0.1)
        raise StrongswanError(f"charon did not open {self.paths.vici_socket} within {VICI_WAIT_S:g} s")

    async def _load_all(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.paths.swanctl, "--load-all", "--file", self.paths.swanctl_conf,
            "--uri", f"unix://{self.paths.vici_socket}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), LOAD_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise StrongswanError(f"swanctl --load-all took longer than {LOAD_TIMEOUT_S:g} s") from None
        for line in out.decode(errors="replace").splitlines():
            # swanctl complains about plugins it was not built with; that is noise, not news
            if line.strip() and "failed to load" not in line:
                log.info("swanctl: %s", line.strip())
        if proc.returncode != 0:
            raise StrongswanError(f"swanctl --load-all failed (exit {proc.returncode})")

    def _vici_request(self, command: str, msg: Message | None = None, timeout: float = 20.0) -> Message:
        with Vici(self.paths.vici_socket, timeout) as vici:
            return vici.checked(command, msg)

    def _list_sas(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with Vici(self.paths.vici_socket) as vici:
            events, _ = vici.streamed("list-sas", "list-sa")
        return parse_list_sas(events)

    async def refresh(self) -> None:
        """Query charon for the current SAs (called before status())."""
        if not self.charon.running:
            self._ike_sas, self._child_sas = [], []
            return
        try:
            self._ike_sas, self._child_sas = await asyncio.to_thread(self._list_sas)
        except ViciError as exc:
            self._ike_sas, self._child_sas = [], []
            self._errors = self._errors[-9:] + [f"list-sas: {exc}"]

    def status(self) -> dict[str, Any]:
        return {
            "charon_pid": self.charon.pid,
            "running": self.charon.running,
            "loaded": self._loaded,
            "ike_sas": list(self._ike_sas),
            "child_sas": list(self._child_sas),
            "errors": self.charon.errors + self._errors,
        }

    def _check_peer(self, peer: str) -> None:
        if peer not in self.peers:
            raise StrongswanError(f"unknown peer {peer!r} (peers: {', '.join(self.peers) or 'none'})")

    async def rekey(self, peer: str, what: str = "child") -> dict[str, Any]:
        self._check_peer(peer)
        key = "ike" if what == "ike" else "child"
        try:
            response = await asyncio.to_thread(self._vici_request, "rekey", {key: peer})
        except ViciError as exc:
            raise StrongswanError(f"rekey {what} {peer}: {exc}") from None
        matches = _int(response.get("matches"))
        if matches == 0:
            raise StrongswanError(f"rekey {what} {peer}: no such SA up")
        log.info("rekey %s SA of %s requested", what, peer)
        return {"peer": peer, "what": what, "matches": matches}

    async def initiate(self, peer: str) -> dict[str, Any]:
        self._check_peer(peer)
        self._held.discard(peer)
        try:
            await asyncio.to_thread(
                self._vici_request, "initiate", {"child": peer, "timeout": "15000", "init-limits": "no"}
            )
        except ViciError as exc:
            raise StrongswanError(f"initiate {peer}: {exc}") from None
        return {"peer": peer, "initiated": True}

    async def terminate(self, peer: str) -> dict[str, Any]:
        self._check_peer(peer)
        self._held.add(peer)
        try:
            await asyncio.to_thread(self._vici_request, "terminate", {"ike": peer, "timeout": "5000"})
        except ViciError as exc:
            raise StrongswanError(f"terminate {peer}: {exc}") from None
        return {"peer": peer, "terminated": True}

    async def _say_goodbye(self) -> None:
        """Tell peers we are going (DELETE): all peers at once, FAREWELL_S in total. One peer
        after the other, a hub with a few dead branches outlasted the agent's stop timeout,
        which cancelled stop() before charon got its SIGTERM."""

        def terminate(peer: str) -> None:
            with contextlib.suppress(ViciError, OSError):
                self._vici_request("terminate", {"ike": peer, "timeout": "1000", "force": "yes"}, 2.0)

        farewell = asyncio.gather(*(asyncio.to_thread(terminate, peer) for peer in self.peers))
        try:
            await asyncio.wait_for(farewell, FAREWELL_S)
        except asyncio.TimeoutError:
            log.warning("peers not all told within %g s; stopping charon anyway", FAREWELL_S)

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._keeper
            self._keeper = None
        if self.charon.pid is None:
            return
        if self.charon.running and self._loaded:
            await self._say_goodbye()
        await self.charon.stop(STOP_GRACE_S)
        log.info("charon stopped")
