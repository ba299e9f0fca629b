"""agent.py without netlink: which services a node gets, optional modules, control dispatch."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from vpnlab_agent.agent import Agent, _optional_import, build_services, first_lan_address, wan_address
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.control import ControlError
from vpnlab_agent.strongswan.service import StrongswanService


def test_strongswan_node_gets_the_strongswan_service(branch: NodeConfig) -> None:
    errors: list[str] = []
    services, engine = build_services(branch, errors)
    assert [type(s) for s in services] == [StrongswanService] and engine is None and errors == []
    assert services[0].dataplane == "strongswan-libipsec"


def test_router_without_ike_runs_no_service(branch: NodeConfig) -> None:
    errors: list[str] = []
    cfg = dataclasses.replace(branch, implementation="agent", ike=None)
    assert build_services(cfg, errors) == ([], None) and errors == []


def test_agent_node_gets_the_ike_service_on_the_chosen_engine(branch: NodeConfig) -> None:
    from vpnlab_agent.io.ike_service import IkeService

    errors: list[str] = []
    cfg = dataclasses.replace(branch, implementation="agent", dataplane="userspace")
    services, engine = build_services(cfg, errors)
    try:
        assert [type(s) for s in services] == [IkeService] and errors == []
        assert engine.name == "userspace" and services[0].dataplane == "userspace"
        assert engine.route_src == "10.1.0.1"  # the first LAN address, inside the selectors
    finally:
        engine.close()


def test_agent_node_with_an_impossible_dataplane_reports_it(branch: NodeConfig) -> None:
    errors: list[str] = []
    cfg = dataclasses.replace(branch, implementation="agent", dataplane="warp")  # type: ignore[arg-type]
    assert build_services(cfg, errors) == ([], None)
    assert errors == ["dataplane: unknown data plane 'warp' (choose auto, userspace or xfrm)",
                      "ike: not started (no data-plane engine)"]


def test_optional_import() -> None:
    assert _optional_import("vpnlab_agent.no_such_module", "X") is None
    assert _optional_import("vpnlab_agent.agent", "Agent") is Agent
    with pytest.raises(AttributeError):
        _optional_import("vpnlab_agent.agent", "NoSuchThing")


def test_first_lan_address(branch: NodeConfig) -> None:
    assert first_lan_address(branch) == "10.1.0.1"
    assert first_lan_address(dataclasses.replace(branch, interfaces=branch.interfaces[:1])) is None
    assert wan_address(branch) == "198.51.100.11"
    assert wan_address(dataclasses.replace(branch, interfaces=branch.interfaces[1:])) is None


class Recorder:
    """A service that records what the agent asks of it."""

    name = "rec"
    dataplane = "test-engine"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]:
        return {"ike_sas": [{"peer": "hub", "state": "ESTABLISHED"}], "child_sas": []}

    async def rekey(self, peer: str, what: str) -> dict[str, Any]:
        self.calls.append(("rekey", peer, what))
        return {"ok": peer}

    async def terminate(self, peer: str) -> dict[str, Any]:
        raise RuntimeError("peer is gone")


def test_control_dispatch(branch: NodeConfig, tmp_path: Any) -> None:
    rec = Recorder()
    agent = Agent(branch, control_path=str(tmp_path / "s"), services=[rec])
    agent.services = [rec]
    agent._started = [rec]

    async def scenario() -> None:
        assert await agent.handle("rekey", {"peer": "hub", "what": "ike"}) == {"ok": "hub"}
        with pytest.raises(ControlError, match=r"unknown peer 'br9' \(peers: hub\)"):
            await agent.handle("rekey", {"peer": "br9", "what": "child"})
        with pytest.raises(ControlError, match="no running service can do that"):
            await agent.handle("initiate", {"peer": "hub"})
        with pytest.raises(ControlError, match="peer is gone"):
            await agent.handle("terminate", {"peer": "hub"})
        st = await agent.handle("status", {})
        assert st["dataplane"] == "test-engine" and st["ready"] is False
        assert st["ike_sas"] == [{**dict.fromkeys(st["ike_sas"][0]), "peer": "hub", "state": "ESTABLISHED"}]
        assert st["interfaces"] == [] and st["routes"] == []  # netlink not opened outside run()
        brief = await agent.handle("summary", {})
        assert brief["ready"] is False and brief["phase"] == "starting" and brief["dataplane"] == "test-engine"
        assert brief["tunnels"] == {"hub": "ESTABLISHED"}  # an IKE SA without a child SA is not up

    asyncio.run(scenario())
    assert rec.calls == [("rekey", "hub", "ike")]


def test_esp_backend_choice() -> None:
    from vpnlab_agent.strongswan.service import StrongswanError, esp_backend

    def has_esp() -> None:
        return None

    def no_esp() -> str:
        return "the kernel refused an ESP AES-GCM state"

    assert esp_backend("userspace", no_esp) is True
    assert esp_backend("auto", no_esp) is True
    assert esp_backend("auto", has_esp) is False
    assert esp_backend("xfrm", has_esp) is False
    with pytest.raises(StrongswanError, match="needs kernel ESP, but the kernel refused"):
        esp_backend("xfrm", no_esp)
    with pytest.raises(StrongswanError, match="unknown data plane 'fast'"):
        esp_backend("fast", has_esp)


def test_strongswan_dataplane_name_follows_the_backend(branch: NodeConfig) -> None:
    svc = StrongswanService(branch)
    assert svc.dataplane == "strongswan-libipsec"
    svc.libipsec = False
    assert svc.dataplane == "strongswan-kernel"


def test_strongswan_stop_ends_charon_within_the_agent_timeout_when_peers_are_dead(
    hub: NodeConfig, tmp_path: Any
) -> None:
    """A charon that accepts VICI connections but never answers (every peer dead, or charon
    wedged): stop() must still reach SIGTERM within the agent's stop timeout, with many peers."""
    import socket

    from vpnlab_agent.agent import SERVICE_STOP_TIMEOUT_S
    from vpnlab_agent.config import PeerConfig
    from vpnlab_agent.strongswan.service import StrongswanPaths

    assert hub.ike is not None
    peers = tuple(
        PeerConfig(f"br{i}", f"br{i}", None, False, ("10.0.0.0/24",), (f"10.{i}.0.0/24",)) for i in range(1, 13)
    )
    config = dataclasses.replace(hub, ike=dataclasses.replace(hub.ike, peers=peers))
    vici_path = str(tmp_path / "vici")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(vici_path)
    silent.listen(64)

    async def scenario() -> int | None:
        svc = StrongswanService(config, StrongswanPaths(vici_socket=vici_path))
        await svc.charon.start("sleep", "60")  # stands in for charon
        svc._loaded = True
        proc = svc.charon._proc
        assert proc is not None
        try:
            await asyncio.wait_for(svc.stop(), SERVICE_STOP_TIMEOUT_S)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
                return None
        return proc.returncode

    try:
        code = asyncio.run(scenario())
    finally:
        silent.close()
    assert code is not None and code < 0  # ended by our signal, not left behind


def test_a_part_that_could_not_be_built_makes_the_node_not_ready(branch: NodeConfig, tmp_path: Any) -> None:
    """The cluster service once failed to build (an import error) while every built service
    started: the node said ready and the lab ran without its load balancer."""
    agent = Agent(branch, control_path=str(tmp_path / "s"), services=[Recorder()])
    agent.services = agent._preset_services or []
    asyncio.run(agent._start_services())
    assert agent.ready is True and agent.phase == "running"

    agent = Agent(branch, control_path=str(tmp_path / "s2"), services=[Recorder()])
    agent.services = agent._preset_services or []
    agent.errors.append("cluster: cannot import name 'kernel_has_esp'")
    asyncio.run(agent._start_services())
    assert agent.ready is False
    assert agent.phase == "failed: cluster: cannot import name 'kernel_has_esp'"
