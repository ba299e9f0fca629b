"""Bringing a lab up at scale: start and wire the containers with a bounded number of agents booting
at once, then wait until every agent is ready and every configured tunnel is up at both ends.

Why bounded: an agent takes about a second of CPU to import, configure its namespace and start
IKE. Two hundred started together on two cores starve each other (and dockerd) and time out
together; with at most `max_booting` agents between "container started" and "agent ready", each
boots in about a second and the next one starts as soon as one is done. Hubs start first, so a
branch's first IKE_SA_INIT finds its hub listening instead of being retransmitted.

What "up" means is what the agents say in their summary (`ctl summary`, the same for our agent and
for strongSwan nodes): `ready` once interfaces and services run, and per configured peer "up" once
the IKE SA is established and has a child SA. A tunnel counts when both of its ends say so.

Every wait has a deadline that scales with the lab or says what it is: an agent has `ready_timeout`
seconds from its own container's start; the tunnels get TUNNELS_BASE_S + TUNNELS_PER_TUNNEL_S per
tunnel after the last agent is ready. A failure is one line: the node, what it was waiting for, and
`vpnlab logs LAB NODE` for the rest.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from vpnlab.errors import LabError
from vpnlab.runtime.base import ContainerInfo, Runtime, container_name
from vpnlab.topology.model import Lab, Node

WORKERS = 8  # concurrent Docker calls; more only queues on 2 cores
BOOTING_PER_CPU = 4  # agents between container start and ready, per core
POLL_S = 0.3  # how often one booting agent is asked again
TUNNEL_POLL_S = 1.0  # ... and one ready agent whose tunnels are not all up yet
READY_TIMEOUT_S = 60.0  # per agent, from its container's start
TUNNELS_BASE_S = 30.0
TUNNELS_PER_TUNNEL_S = 0.1  # the hub answers the handshakes one after another
SUMMARY_TIMEOUT_S = 5.0
# While an agent's socket does not answer yet, whether its container still runs is asked of the
# engine at most this often (each ask is a `docker inspect`: at 0.3 s a poll, 200 booting agents
# made dockerd answer ~1,000 of them per deploy, on the same 2 cores the agents boot on).
ALIVE_CHECK_S = 2.0
UP = "up"  # vpnlab_agent.status.UP


def max_booting() -> int:
    return max(2, BOOTING_PER_CPU * (os.cpu_count() or 1))


def expected_tunnels(lab: Lab) -> list[tuple[str, str]]:
    """(hub, branch) for each configured tunnel: every branch has one with each of its hubs.
    Not those with a libreswan end: pluto's data plane is the kernel's XFRM, so on a kernel without
    ESP its tunnels never carry a child SA; deploy waits for pluto to run, its tests for its IKE SAs."""
    libreswan = {n.name for n in lab.routers if n.implementation == "libreswan"}
    return sorted((h, n.name) for n in lab.routers if n.role == "branch" for h in n.hubs
                  if n.name not in libreswan and h not in libreswan)


def tunnels_timeout(tunnels: int) -> float:
    return TUNNELS_BASE_S + TUNNELS_PER_TUNNEL_S * tunnels


def start_order(lab: Lab) -> list[Node]:
    """Hubs and gateways first, then the other routers, hosts last (they wait for nothing)."""
    rank = {"hub": 0, "gateway": 0, "branch": 1}
    return sorted(lab.nodes, key=lambda n: (rank.get(n.role, 2), lab.nodes.index(n)))


def logs_hint(lab: str, node: str) -> str:
    return f"its log: `vpnlab logs {lab} {node}`"


class NodeFailed(LabError):
    """A node failed during bring-up; `nodes` are the ones whose logs say why."""

    def __init__(self, message: str, nodes: Iterable[str]) -> None:
        super().__init__(message)
        self.nodes = tuple(nodes)


@dataclass
class _Agent:
    node: str
    cname: str
    booted_at: float = 0.0  # monotonic time its container started
    info: ContainerInfo | None = None
    ready: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    note: str = "control socket not answering yet"
    next_poll: float = 0.0
    next_alive_check: float = 0.0


class Bringup:
    """One deploy's start → wire → ready → tunnels, reporting to a progress callback set."""

    def __init__(
        self,
        lab: Lab,
        rt: Runtime,
        *,
        start: Callable[[Node], ContainerInfo],
        wire: Callable[[Node, ContainerInfo], None],
        summary: Callable[[ContainerInfo], dict[str, Any]],
        has_agent: Callable[[Node], bool],
        ready_timeout: float = READY_TIMEOUT_S,
        report: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lab, self.rt = lab, rt
        self._start, self._wire, self._summary, self._has_agent = start, wire, summary, has_agent
        self.ready_timeout = ready_timeout
        self.report = report
        self.clock = clock
        self.agents: dict[str, _Agent] = {
            n.name: _Agent(n.name, container_name(lab.name, n.name)) for n in lab.nodes if has_agent(n)
        }
        self.tunnels = [t for t in expected_tunnels(lab) if t[0] in self.agents and t[1] in self.agents]
        self.limit = max_booting()
        self._running: set[str] = set()

    def attach(self, infos: dict[str, ContainerInfo | None]) -> None:
        """Nodes that run already (a deployed lab): nothing to start, only their agents to wait for."""
        now = self.clock()
        for name, info in infos.items():
            self._running.add(name)
            if name in self.agents and info is not None:
                self.agents[name].info, self.agents[name].booted_at = info, now

    # --- the phases -----------------------------------------------------------------------

    def run(self) -> None:
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vpnlab-start") as starts, \
                ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vpnlab-poll") as polls:
            self._starts, self._polls = starts, polls
            try:
                self._start_all()
                self._wait_tunnels()
            except BaseException:
                self._cancelled = True
                starts.shutdown(wait=True, cancel_futures=True)  # nothing may start after cleanup begins
                raise

    _cancelled = False

    def _start_all(self) -> None:
        queue = deque(n for n in start_order(self.lab) if n.name not in self._running)
        starting: dict[Future[ContainerInfo], Node] = {}
        polling: dict[Future[dict[str, Any]], _Agent] = {}
        containers_task = None
        if queue:
            self._task("containers", len(queue))
            containers_task = self._last_task
        self._task("agents ready", len(self.agents))
        ready_task = self._last_task
        # agent containers submitted or started whose agent is not ready yet
        booting = sum(1 for a in self.agents.values() if a.info is not None)
        while queue or starting or any(not a.ready for a in self.agents.values()):
            while queue and len(starting) < WORKERS:
                if self._has_agent(queue[0]):
                    if booting >= self.limit:
                        break
                    booting += 1
                node = queue.popleft()
                starting[self._starts.submit(self._start_one, node)] = node
            self._describe(ready_task, f"agents ready ({booting} booting, at most {self.limit})")
            self._poll_due(polling, lambda a: a.info is not None and not a.ready, POLL_S)
            done = self._wait([*starting, *polling])
            for fut in done:
                if fut in starting:
                    node = starting.pop(fut)
                    try:
                        info = fut.result()
                    except LabError as exc:
                        raise NodeFailed(f"node {node.name} failed: {exc}; {logs_hint(self.lab.name, node.name)}",
                                         [node.name]) from exc
                    self._wire(node, info)
                    self._advance(containers_task)
                    agent = self.agents.get(node.name)
                    if agent is not None:
                        agent.info, agent.booted_at = info, self.clock()
                        agent.next_poll = agent.booted_at + POLL_S
                else:
                    agent = polling.pop(fut)  # type: ignore[arg-type]
                    if self._take(agent, fut):
                        booting -= 1
                        self._advance(ready_task)
            self._check_deadlines()

    def _wait_tunnels(self) -> None:
        if not self.tunnels:
            return
        self._task("tunnels up", len(self.tunnels))
        task = self._last_task
        budget = tunnels_timeout(len(self.tunnels))
        deadline = self.clock() + budget
        polling: dict[Future[dict[str, Any]], _Agent] = {}
        counted = 0
        while True:
            down = self.tunnels_down()
            if len(self.tunnels) - len(down) > counted:
                self._advance(task, len(self.tunnels) - len(down) - counted)
                counted = len(self.tunnels) - len(down)
            if not down:
                return
            if self.clock() > deadline:
                raise self._tunnels_error(down, budget)
            waiting_on = {n for t in down for n in t}
            self._poll_due(polling, lambda a: a.node in waiting_on and not self._all_up(a), TUNNEL_POLL_S)
            done = self._wait(list(polling))
            for fut in done:
                self._take(polling.pop(fut), fut)  # type: ignore[arg-type]

    # --- state ----------------------------------------------------------------------------

    def tunnels_down(self) -> list[tuple[str, str]]:
        """Configured tunnels that one of their ends does not report up."""
        def up(a: str, b: str) -> bool:
            return (self.agents[a].summary.get("tunnels") or {}).get(b) == UP
        return [(h, b) for h, b in self.tunnels if not (up(h, b) and up(b, h))]

    def _all_up(self, agent: _Agent) -> bool:
        tunnels = agent.summary.get("tunnels") or {}
        return bool(tunnels) and all(state == UP for state in tunnels.values())

    def _wait(self, futures: list[Future[Any]]) -> set[Future[Any]]:
        if not futures:  # wait() returns at once on nothing: sleep until a poll is due instead
            time.sleep(POLL_S / 3)
            return set()
        done, _ = wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)
        return done

    def _start_one(self, node: Node) -> ContainerInfo:
        if self._cancelled:
            raise LabError("cancelled")
        return self._start(node)

    def _poll_due(self, polling: dict[Future[dict[str, Any]], _Agent], wanted: Callable[[_Agent], bool],
                  interval: float) -> None:
        now = self.clock()
        busy = {a.node for a in polling.values()}
        for agent in self.agents.values():
            if agent.node not in busy and agent.next_poll <= now and wanted(agent):
                agent.next_poll = now + interval
                assert agent.info is not None
                polling[self._polls.submit(self._summary, agent.info)] = agent

    def _take(self, agent: _Agent, fut: Future[dict[str, Any]]) -> bool:
        """Record a poll's answer; True when it made the agent ready just now."""
        try:
            summary = fut.result()
        except Exception as exc:  # not listening yet, or a bad answer
            now = self.clock()
            if now >= agent.next_alive_check:
                agent.next_alive_check = now + ALIVE_CHECK_S
                info = self.rt.get(agent.cname)
                if info is None or info.state != "running":
                    raise self._dead_error(agent.node, agent.cname, info) from None
            agent.note = str(exc).splitlines()[0] if str(exc) else "no answer"
            return False
        agent.summary = summary
        phase = str(summary.get("phase") or "")
        if phase.startswith("failed"):
            errors = "; ".join(map(str, summary.get("errors") or [])) or phase
            raise NodeFailed(f"node {agent.node} failed ({_clip(errors)}); {logs_hint(self.lab.name, agent.node)}",
                             [agent.node])
        agent.note = phase or "not ready yet"
        if summary.get("ready") and not agent.ready:
            agent.ready = True
            return True
        return False

    def _check_deadlines(self) -> None:
        now = self.clock()
        late = [a for a in self.agents.values() if a.info is not None and not a.ready
                and now - a.booted_at > self.ready_timeout]
        if late:
            a = late[0]
            more = f" (and {len(late) - 1} more)" if len(late) > 1 else ""
            raise NodeFailed(
                f"node {a.node} not ready after {self.ready_timeout:g} s ({_clip(a.note)}){more}; "
                f"{logs_hint(self.lab.name, a.node)}", [x.node for x in late])

    def _dead_error(self, node: str, cname: str, info: ContainerInfo | None) -> NodeFailed:
        state = info.state if info else "gone"
        last = self.rt.logs(cname, 1).strip().splitlines()
        said = f" (last line: {_clip(last[-1])})" if last else ""
        return NodeFailed(f"node {node} failed: container {cname} is {state}{said}; {logs_hint(self.lab.name, node)}",
                          [node])

    def _tunnels_error(self, down: list[tuple[str, str]], budget: float) -> NodeFailed:
        def state(a: str, b: str) -> str:
            return str((self.agents[a].summary.get("tunnels") or {}).get(b, "no answer"))
        shown = ", ".join(f"{h}-{b} ({h}: {state(h, b)}, {b}: {state(b, h)})" for h, b in down[:3])
        more = f" and {len(down) - 3} more" if len(down) > 3 else ""
        branch = down[0][1]
        return NodeFailed(
            f"{len(down)} of {len(self.tunnels)} tunnels not up {budget:g} s after every agent was ready "
            f"({TUNNELS_BASE_S:g} s + {TUNNELS_PER_TUNNEL_S:g} s per tunnel): {shown}{more}; "
            f"{logs_hint(self.lab.name, branch)}",
            sorted({n for t in down[:5] for n in t}))

    # --- progress -------------------------------------------------------------------------

    _last_task: Any = None

    def _task(self, description: str, total: int) -> None:
        self._last_task = self.report.add_task(description, total=total) if self.report is not None else None

    def _advance(self, task: Any, by: int = 1) -> None:
        if self.report is not None and task is not None:
            self.report.update(task, advance=by)

    def _describe(self, task: Any, description: str) -> None:
        if self.report is not None and task is not None:
            self.report.update(task, description=description)


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
