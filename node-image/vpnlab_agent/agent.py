"""The router agent process: configure the namespace, run the services, answer the control socket.

Order: control socket first (so `ctl status` answers "not ready" while we wait), then wait for the
interfaces the orchestrator moves in, apply addresses and routes, start the services. SIGTERM or
SIGINT stops the services (peers get DELETEs), removes what we added and returns 0.

A service is any object with `name`, `async start()`, `async stop()` and `status() -> dict`;
optionally `async refresh()` (called before status()), `async rekey(peer, what)`,
`async initiate(peer)`, `async terminate(peer)`, `dataplane` (engine name for the report), and
`summary_refresh = False` when refresh() reads nothing a summary shows (the mesh's nft counters).

`status` is the whole report (`inspect LAB NODE`); `summary` is what deploy polls and the lab-wide
`inspect` shows: readiness, what the agent is doing now (`phase`), and one state per configured
tunnel, without the routes, interfaces and selectors that make a hub's status large.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from typing import Any, Protocol

from vpnlab_agent import netconfig, status
from vpnlab_agent.config import CONTROL_SOCKET, NodeConfig
from vpnlab_agent.control import ControlError, ControlServer

log = logging.getLogger("vpnlab_agent")

SERVICE_START_TIMEOUT_S = 60.0
SERVICE_STOP_TIMEOUT_S = 10.0


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


def first_address(config: NodeConfig, kind: str) -> str | None:
    """The first address (without prefix) of the first `kind` ("lan" or "wan") interface that has one."""
    for iface in config.interfaces:
        if iface.kind == kind and iface.addresses:
            return str(ipaddress.ip_interface(iface.addresses[0]).ip)
    return None


def first_lan_address(config: NodeConfig) -> str | None:
    return first_address(config, "lan")


def wan_address(config: NodeConfig) -> str | None:
    return first_address(config, "wan")


def _optional_import(module: str, attr: str) -> Any | None:
    """The attribute, or None when the module itself is absent (not when something inside it is)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        parts = module.split(".")
        if exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}:
            return None
        raise


def build_services(config: NodeConfig, errors: list[str]) -> tuple[list[Service], Any]:
    """The services for this node's implementation, and the data-plane engine (if any) to close."""
    from vpnlab_agent.contexts.config import contexts_of

    services, engine = _vpn_services(config, errors)
    contexts = contexts_of(config.extensions)
    if contexts is not None:
        # Routing contexts first, so their tables exist before any tunnel (docs/hsvpn.md).
        from vpnlab_agent.contexts.service import ContextService

        services = [ContextService(config, contexts, engine=engine), *services]
    return services, engine


def _vpn_services(config: NodeConfig, errors: list[str]) -> tuple[list[Service], Any]:
    if config.role == "swarm":  # IKE clients for measuring a cluster (vpnlab_agent/cluster/swarm.py)
        from vpnlab_agent.cluster.swarm import SwarmService

        return [SwarmService(config)], None
    if config.implementation == "strongswan":
        from vpnlab_agent.strongswan.service import StrongswanService

        return [StrongswanService(config)], None
    if config.role == "nat":
        from vpnlab_agent.nat.service import NatService

        return [NatService(config)], None
    if config.ike is None:
        return [], None  # a router without IPsec peers: interfaces and routes only
    select_engine = _optional_import("vpnlab_agent.dataplane.probe", "select_engine")
    ike_service = _optional_import("vpnlab_agent.io.ike_service", "IkeService")
    from vpnlab_agent.contexts.wiring import engine_choice, ike_extensions

    engine = None
    if select_engine is None:
        errors.append("dataplane: not available (vpnlab_agent.dataplane.probe missing)")
    else:
        try:
            preference, options = engine_choice(config)  # routing contexts need the userspace engine
            engine = select_engine(preference, route_src=first_lan_address(config), **options)
        except Exception as exc:  # the engine's own one-line error; the node reports it, not ready
            errors.append(f"dataplane: {exc}")
    if ike_service is None:
        errors.append("ike: not available")
        return [], engine
    if engine is None:
        errors.append("ike: not started (no data-plane engine)")
        return [], None
    try:
        # A branch behind NAT has no public address but still runs IKE from its WAN address.
        ike = ike_service(config, engine, local_addr=config.public_address or wan_address(config),
                          extensions=ike_extensions(config))
    except Exception as exc:  # e.g. no public address to run IKE on: reported, not ready
        errors.append(f"ike: {exc}")
        return [], engine
    services: list[Service] = [ike]
    from vpnlab_agent.mesh.config import mesh_wanted

    # Cluster members: no mesh (their clients come and go by redirect, and the hub's per-pair
    # counters grow with the square of the clients: 300 swarm clients would be 90,000 nft rules).
    if mesh_wanted(config) and not config.extensions.get("cluster"):
        from vpnlab_agent.mesh.service import MeshService

        services.append(MeshService(config, ike))  # Advanced Mesh VPN: after IKE, on top of it
    if config.extensions.get("cluster") or config.extensions.get("redirect"):
        from vpnlab_agent.cluster.wiring import client_services, cluster_services

        try:  # load balancer (docs/loadbalancer.md): after IKE, on top of it
            services.extend(client_services(config, ike))
            services.extend(cluster_services(config, ike, first_lan_address(config)))
        except Exception as exc:  # a bad extension is reported; the node is not ready
            errors.append(f"cluster: {exc}")
    return services, engine


class Agent:
    def __init__(
        self,
        config: NodeConfig,
        *,
        control_path: str = CONTROL_SOCKET,
        wait_timeout: float = netconfig.WAIT_TIMEOUT_S,
        services: list[Service] | None = None,
    ) -> None:
        self.config = config
        self.control = ControlServer(control_path, self.handle)
        self.wait_timeout = wait_timeout
        self.started_at = time.time()
        self.ready = False
        self.phase = "starting"  # what bring-up is doing now: what a deploy that waits is waiting for
        self.errors: list[str] = []
        self.services: list[Service] = []
        self._preset_services = services
        self._engine: Any = None
        self._started: list[Service] = []
        self._applied = netconfig.Applied()
        self._ipr: Any = None
        self._stop = asyncio.Event()

    @property
    def dataplane(self) -> str | None:
        for svc in self.services:
            name = getattr(svc, "dataplane", None)
            if name:
                return str(name)
        return getattr(self._engine, "name", None)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        from vpnlab_agent.rtnl import Rtnl

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self._ipr = Rtnl()
        try:
            await self.control.start()
            log.info("agent for %s (%s, %s) started", self.config.name, self.config.role,
                     self.config.implementation)
            bring_up = asyncio.create_task(self._bring_up())
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({bring_up, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not bring_up.done():
                bring_up.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await bring_up
            elif bring_up.exception() is not None:
                exc = bring_up.exception()
                self.errors.append(str(exc))
                log.error("not ready: %s", exc)
            if not stop.done():
                await stop  # stay up and report, until told to stop
            log.info("stopping")
        finally:
            await self._shutdown()
        log.info("stopped")
        return 0

    async def _bring_up(self) -> None:
        netplan = netconfig.plan(self.config)
        self.phase = f"waiting for interfaces {', '.join(netplan.required_links)}"
        try:
            await netconfig.wait_for_links(self._ipr, netplan.required_links, self.wait_timeout)
            self.phase = "configuring addresses and routes"
            # apply() records into self._applied as it goes: a failure half-way is still undone.
            netconfig.apply(self._ipr, netplan, self._applied)
        except BaseException:
            self.phase = f"failed while {self.phase}"
            raise
        self.phase = "building services"
        self.services = (
            self._preset_services if self._preset_services is not None
            else self._build_services()
        )
        await self._start_services()

    async def _start_services(self) -> None:
        # A part of the node the lab asked for that could not even be built (no engine for IKE, a
        # cluster extension that failed to load) makes the node not ready: a deploy that "succeeds"
        # with a feature silently missing is worse than one that fails naming it.
        failed = bool(self.errors)
        for svc in self.services:
            # Listed before start() runs: a failure or a SIGTERM half-way through start() must
            # still get stop() called (charon may already be running).
            self._started.append(svc)
            self.phase = f"starting {svc.name}"
            try:
                await asyncio.wait_for(svc.start(), SERVICE_START_TIMEOUT_S)
            except Exception as exc:
                msg = str(exc) or type(exc).__name__
                if isinstance(exc, asyncio.TimeoutError):
                    msg = f"did not start within {SERVICE_START_TIMEOUT_S:g} s"
                self.errors.append(f"{svc.name}: {msg}")
                log.error("service %s failed to start: %s", svc.name, msg)
                failed = True
                continue
            log.info("service %s started", svc.name)
        # Ready means: interfaces configured and every service we have is running.
        self.ready = not failed
        self.phase = "running" if self.ready else "failed: " + "; ".join(self.errors)
        if self.ready:
            log.info("ready")
        else:
            log.error("not ready: %s", "; ".join(self.errors))

    def _build_services(self) -> list[Service]:
        services, self._engine = build_services(self.config, self.errors)
        for err in self.errors:
            log.warning("%s", err)
        return services

    async def _shutdown(self) -> None:
        self.ready = False
        for svc in reversed(self._started):
            try:
                await asyncio.wait_for(svc.stop(), SERVICE_STOP_TIMEOUT_S)
            except Exception as exc:
                log.error("service %s did not stop cleanly: %s", svc.name, exc or type(exc).__name__)
        self._started.clear()
        if self._engine is not None:
            with contextlib.suppress(Exception):
                self._engine.close()  # idempotent; the IKE service normally closed it already
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                netconfig.undo(self._ipr, self._applied)
        await self.control.stop()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    # -- control requests -------------------------------------------------------------------

    async def handle(self, command: str, args: dict[str, Any]) -> Any:
        if command == "status":
            return await self.status()
        if command == "summary":
            return await self.summary()
        peers = [p.name for p in self.config.ike.peers] if self.config.ike else []
        peer = args["peer"]
        if peer not in peers:
            raise ControlError(f"unknown peer {peer!r} (peers: {', '.join(peers) or 'none'})")
        for svc in self._started:
            method = getattr(svc, command, None)
            if method is None:
                continue
            try:
                if command == "rekey":
                    return await method(peer, args.get("what", "child"))
                if command == "retag":
                    return await method(peer, args["context"], args["tag"])
                return await method(peer)
            except ControlError:
                raise
            except Exception as exc:
                raise ControlError(str(exc) or type(exc).__name__) from None
        raise ControlError(f"{command}: no running service can do that on {self.config.name}")

    async def _service_status(self, for_summary: bool = False) -> dict[str, dict[str, Any]]:
        service_status: dict[str, dict[str, Any]] = {}
        for svc in self.services:
            refresh = getattr(svc, "refresh", None)
            if for_summary and not getattr(svc, "summary_refresh", True):
                refresh = None
            if refresh is not None and svc in self._started:
                with contextlib.suppress(Exception):
                    await refresh()
            try:
                service_status[svc.name] = svc.status()
            except Exception as exc:
                service_status[svc.name] = {"errors": [f"status failed: {exc}"]}
        return service_status

    def _alive(self, service_status: dict[str, dict[str, Any]]) -> bool:
        # A service whose process died (charon) makes the node not ready, whatever happened at start.
        return self.ready and all(st.get("running", True) is not False for st in service_status.values())

    async def summary(self) -> dict[str, Any]:
        service_status = await self._service_status(for_summary=True)
        return status.summary(
            self.config,
            ready=self._alive(service_status),
            phase=self.phase,
            dataplane=self.dataplane,
            services=service_status,
            errors=self.errors,
        )

    async def status(self) -> dict[str, Any]:
        service_status = await self._service_status()
        interfaces, routes = ([], []) if self._ipr is None else netconfig.snapshot(self._ipr)
        return status.build(
            self.config,
            ready=self._alive(service_status),
            started_at=self.started_at,
            dataplane=self.dataplane,
            interfaces=interfaces,
            routes=routes,
            services=service_status,
            errors=self.errors,
            phase=self.phase,
        )
