"""bringup.Bringup's scheduling and waiting, with in-process stand-ins for containers and agents
(the real engine and agents are in tests/e2e/test_lab_tunnels_up.py and test_lab_rollback.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from vpnlab import bringup
from vpnlab.bringup import Bringup, NodeFailed, expected_tunnels, start_order
from vpnlab.errors import LabError
from vpnlab.runtime.base import ContainerInfo
from vpnlab.topology.loader import load_topology
from vpnlab.topology.model import Lab, Node


def _lab(tmp_path: Path, branches: int, hosts: int = 0) -> Lab:
    lines = ["name: t", "secret: {psk: k}", "nodes:", "  hub: {role: hub}"]
    lines += [f"  b{i}: {{role: branch, hosts: {1 if i <= hosts else 0}}}" for i in range(1, branches + 1)]
    p = tmp_path / "t.yml"
    p.write_text("\n".join(lines) + "\n")
    return load_topology(p)


class FakeLab:
    """Containers that 'run' when started and agents that get ready after `boot_polls` summaries;
    tunnel ends come up as `tunnel_up(node, peer)` says."""

    def __init__(self, lab: Lab, boot_polls: int = 2) -> None:
        self.lab = lab
        self.boot_polls = boot_polls
        self.polls: dict[str, int] = {}
        self.started: list[str] = []
        self.booting: set[str] = set()
        self.max_booting = 0
        self.phase: dict[str, str] = {}
        self.dead: set[str] = set()
        self.lock = threading.Lock()
        self.tunnel_up = lambda node, peer: True

    # runtime -------------------------------------------------------------------------------
    def get(self, name: str) -> ContainerInfo | None:
        node = name.split("-", 2)[2]
        state = "exited" if node in self.dead else "running"
        return ContainerInfo(name, name, "t", node, "", "", "", state, 1 if state == "running" else 0)

    def logs(self, name: str, tail: int | None = 20) -> str:
        return "line one\nvpnlab-agent: cannot load /nonexistent.json"

    # bring-up callbacks --------------------------------------------------------------------
    def start(self, node: Node) -> ContainerInfo:
        with self.lock:
            self.started.append(node.name)
            if node.is_router:
                self.booting.add(node.name)
                self.max_booting = max(self.max_booting, len(self.booting))
        info = self.get(f"vpnlab-t-{node.name}")
        assert info is not None
        return info

    def summary(self, info: ContainerInfo) -> dict[str, Any]:
        node = info.node
        if node in self.dead:
            raise LabError("agent not reachable")
        with self.lock:
            self.polls[node] = self.polls.get(node, 0) + 1
            ready = self.polls[node] >= self.boot_polls and node not in self.phase
            if ready:
                self.booting.discard(node)
        peers = [h for h in self.lab.node(node).hubs] if node != "hub" else [
            n.name for n in self.lab.routers if n.role == "branch"]
        return {
            "ready": ready,
            "phase": self.phase.get(node, "running" if ready else "starting ike"),
            "errors": ["mesh: did not start within 60 s"] if self.phase.get(node, "").startswith("failed") else [],
            "tunnels": {p: ("up" if ready and self.tunnel_up(node, p) else "connecting") for p in peers},
        }

    def bringup(self, **kw: Any) -> Bringup:
        return Bringup(self.lab, self, start=self.start, wire=lambda n, i: None, summary=self.summary,  # type: ignore[arg-type]
                       has_agent=lambda n: n.is_router, **kw)


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bringup, "POLL_S", 0.01)
    monkeypatch.setattr(bringup, "TUNNEL_POLL_S", 0.01)


def test_hubs_start_first_and_hosts_last(tmp_path: Path) -> None:
    lab = _lab(tmp_path, 3, hosts=1)
    assert [n.name for n in start_order(lab)] == ["hub", "b1", "b2", "b3", "b1-h1"]
    assert expected_tunnels(lab) == [("hub", "b1"), ("hub", "b2"), ("hub", "b3")]


def test_no_more_agents_boot_at_once_than_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bringup, "max_booting", lambda: 3)
    fake = FakeLab(_lab(tmp_path, 20, hosts=2), boot_polls=3)
    up = fake.bringup()
    up.run()
    assert len(fake.started) == 23 and fake.started[0] == "hub"
    assert 1 < fake.max_booting <= 3
    assert up.tunnels_down() == []


def test_deploy_waits_until_both_ends_of_every_tunnel_say_up(tmp_path: Path) -> None:
    # b2 reports its tunnel up at once; the hub gets its child SA with b2 only later.
    fake = FakeLab(_lab(tmp_path, 2))
    t0 = time.monotonic()
    fake.tunnel_up = lambda node, peer: not (node == "hub" and peer == "b2") or time.monotonic() - t0 > 0.3
    fake.bringup().run()
    assert time.monotonic() - t0 > 0.3


def test_tunnels_that_never_come_up_are_named_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bringup, "TUNNELS_BASE_S", 0.2)
    monkeypatch.setattr(bringup, "TUNNELS_PER_TUNNEL_S", 0.0)
    fake = FakeLab(_lab(tmp_path, 3))
    fake.tunnel_up = lambda node, peer: "b2" not in (node, peer)
    with pytest.raises(NodeFailed) as err:
        fake.bringup().run()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("1 of 3 tunnels not up 0.2 s after every agent was ready")
    assert "hub-b2 (hub: connecting, b2: connecting)" in msg and "`vpnlab logs t b2`" in msg
    assert set(err.value.nodes) == {"hub", "b2"}


def test_an_agent_stuck_in_bring_up_fails_by_name_with_what_it_waits_for(tmp_path: Path) -> None:
    fake = FakeLab(_lab(tmp_path, 2))
    fake.phase["b2"] = "waiting for interfaces wan0, lan0, lan9"
    with pytest.raises(NodeFailed, match=r"^node b2 not ready after 0.3 s \(waiting for interfaces wan0, lan0, lan9\); "
                                         r"its log: `vpnlab logs t b2`$"):
        fake.bringup(ready_timeout=0.3).run()


def test_a_failed_service_fails_at_once_not_at_the_deadline(tmp_path: Path) -> None:
    fake = FakeLab(_lab(tmp_path, 2))
    fake.phase["hub"] = "failed: a service did not start"
    t0 = time.monotonic()
    with pytest.raises(NodeFailed, match=r"^node hub failed \(mesh: did not start within 60 s\); its log"):
        fake.bringup(ready_timeout=30).run()
    assert time.monotonic() - t0 < 5


def test_a_dead_container_is_named_with_its_last_log_line(tmp_path: Path) -> None:
    fake = FakeLab(_lab(tmp_path, 1))
    fake.dead.add("hub")
    with pytest.raises(NodeFailed, match=r"^node hub failed: container vpnlab-t-hub is exited \(last line: "
                                         r"vpnlab-agent: cannot load /nonexistent.json\); its log: `vpnlab logs t hub`$"):
        fake.bringup(ready_timeout=30).run()


def test_an_agent_not_answering_yet_costs_the_engine_one_inspect_per_alive_check(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    class Silent(FakeLab):
        """Each agent's socket answers only from its 6th poll on; counts the engine's inspects."""

        gets = 0

        def get(self, name: str) -> ContainerInfo | None:
            Silent.gets += 1
            return super().get(name)

        def summary(self, info: ContainerInfo) -> dict[str, Any]:
            with self.lock:
                self.polls[info.node] = self.polls.get(info.node, 0) + 1
                if self.polls[info.node] <= 5:
                    raise LabError(f"agent not reachable: no socket in {info.name}")
                self.polls[info.node] = self.boot_polls  # ready from here on
            return super().summary(info)

    monkeypatch.setattr(bringup, "ALIVE_CHECK_S", 60.0)
    fake = Silent(_lab(tmp_path, 4))
    fake.bringup().run()
    assert Silent.gets == 5 + 5  # one in each start, one for each agent's first failed poll, not five
