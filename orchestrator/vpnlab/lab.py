"""Lab lifecycle: deploy, destroy, inspect, exec. Everything a lab owns is found again from labels
(containers) and names (the fabric netns), so destroy works after a crash and twice in a row.

Deploy order: the file → refuse a lab that exists (before any image build) → kinds make
ContainerSpecs → fabric netns with one bridge per segment → containers started concurrently, with a
bounded number of agents booting at once, each wired as soon as it runs → wait until every agent
reports ready and every configured tunnel is up (bringup.py). Any failure, Ctrl-C included,
destroys what was made and re-raises; a node that failed keeps its log for `vpnlab logs`.
"""

from __future__ import annotations

import dataclasses
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pyroute2.netlink.exceptions import NetlinkError

from vpnlab import nodelogs
from vpnlab.bringup import READY_TIMEOUT_S, WORKERS, Bringup, NodeFailed
from vpnlab.errors import LabError, VpnlabError, one_line
from vpnlab.kinds.base import ContainerSpec
from vpnlab.net.fabric import Fabric, configure_interface, fabric_netns_name, interface_addresses, remove_fabric
from vpnlab.net.namespace import list_netns, netns_exists
from vpnlab.net.portrecords import LABEL_PORTS, heal_hint, missing_interfaces, port_records, ports_label
from vpnlab.net.wiring import FabricPlan, interface_mac, plan_fabric
from vpnlab.progress import ProgressSink
from vpnlab.runtime.base import (
    ContainerInfo,
    Runtime,
    container_name,
    node_labels,
)
from vpnlab.topology.model import Lab, Node
from vpnlab.topology.schema import LAB_NAME_RE, NODE_NAME_RE

LAB_NAME = LAB_NAME_RE  # the topology file's `name` rule: it becomes part of netns and container names
STATUS_TIMEOUT_S = 5.0
DETAIL_ROUTERS = 12  # `inspect LAB` reads every router's full status up to this many routers, else summaries
KEPT_LOGS = 10  # nodes whose logs a failed deploy keeps for `vpnlab logs`


@dataclass(frozen=True)
class DeployResult:
    lab: str
    fabric_netns: str
    containers: int
    seconds: float


@dataclass(frozen=True)
class DestroyResult:
    lab: str
    containers_removed: int
    netns_removed: bool

    @property
    def found_anything(self) -> bool:
        return self.containers_removed > 0 or self.netns_removed


@dataclass(frozen=True)
class LabSummary:
    name: str
    topology: str
    nodes: int
    running: int
    fabric_present: bool


@dataclass
class NodeView:
    name: str
    role: str
    kind: str
    container: str
    state: str
    addresses: dict[str, list[str]] = field(default_factory=dict)
    agent: dict[str, Any] | None = None  # the agent's full status JSON (routers, when read in detail)
    summary: dict[str, Any] | None = None  # the agent's summary (routers): ready, phase, tunnel states
    problem: str | None = None  # why `agent`/`summary` is missing, for routers
    unwired: list[str] = field(default_factory=list)  # interfaces a running container lost (lifecycle.py)

    @property
    def up(self) -> bool:
        if self.state != "running" or self.unwired:
            return False
        if self.kind == "host":
            return True
        return bool((self.summary or self.agent or {}).get("ready"))


@dataclass
class LabView:
    name: str
    topology: str
    fabric_netns: str
    fabric_present: bool
    nodes: list[NodeView]
    detail: bool = True  # routers' full status read (`agent`), not only their summary


def _runtime(runtime: Runtime | None) -> Runtime:
    if runtime is not None:
        return runtime
    from vpnlab.runtime.docker import DockerRuntime

    return DockerRuntime()


def check_lab_name(name: str) -> str:
    if not LAB_NAME.match(name):
        raise LabError(
            f"invalid lab name {name!r}: lowercase letter first, then lowercase letters, digits or '-', at most 12"
        )
    return name


def load_lab(topology: str | Path, name: str | None = None) -> Lab:
    """Load, validate and plan a topology file, optionally under another lab name."""
    from vpnlab.topology import load_topology

    return load_topology(Path(topology), name=None if name is None else check_lab_name(name))


def resolve_lab_name(arg: str) -> str:
    """`destroy` and friends take a lab name or a topology file; a file means its `name`."""
    path = Path(arg)
    if path.suffix in (".yml", ".yaml") or path.is_file():
        return load_lab(path).name
    return check_lab_name(arg)


def deploy(
    topology: str | Path,
    *,
    name: str | None = None,
    reconfigure: bool = False,
    progress: ProgressSink | None = None,
    runtime: Runtime | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> DeployResult:
    """The whole `vpnlab deploy`: topology → environment → image → lab."""
    # The file first: its mistakes are the user's most likely ones and need neither root nor Docker.
    lab = load_lab(topology, name)

    from vpnlab.environment import check_docker, check_privileges
    from vpnlab.image import ensure_image

    check_privileges()
    check_docker()
    rt = _runtime(runtime)
    if reconfigure:
        destroy(lab.name, runtime=rt)
    else:
        _refuse_existing(lab.name, rt)  # before a possibly long image build, not after it
    image = ensure_image(progress=progress)
    return deploy_lab(lab, image, runtime=rt, progress=progress, ready_timeout=ready_timeout)


def deploy_lab(
    lab: Lab,
    image: str,
    *,
    runtime: Runtime | None = None,
    progress: ProgressSink | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    specs: dict[str, ContainerSpec] | None = None,
) -> DeployResult:
    """Bring up a resolved lab from `image`. `specs` overrides the kinds' ContainerSpecs per node."""
    rt = _runtime(runtime)
    check_lab_name(lab.name)
    netns = fabric_netns_name(lab.name)
    _refuse_existing(lab.name, rt)
    all_specs = _container_specs(lab)
    all_specs.update(specs or {})
    extra_images = {s.image for s in all_specs.values() if s.image}
    if extra_images:  # e.g. libreswan's: built on demand, only for labs whose nodes name it
        from vpnlab.image_libreswan import ensure_images

        ensure_images(extra_images, progress)
    plan = plan_fabric(lab)
    started = time.monotonic()
    report = _Report(progress)
    report.start("fabric", len(plan.bridges))
    nodelogs.clear(lab.name)
    try:
        fabric = Fabric.create(netns)
    except FileExistsError:  # a concurrent deploy of the same name won the race: not ours to undo
        raise LabError(f"lab {lab.name} already exists (netns {netns} appeared while deploying)") from None
    try:
        try:
            for bridge in plan.bridges:
                fabric.add_bridge(bridge.name, bridge.segment)
                report.advance()
            _bringup(lab, image, all_specs, plan, rt, fabric, progress, ready_timeout).run()
        finally:
            fabric.close()
    except BaseException as exc:
        if isinstance(exc, NodeFailed):
            nodelogs.keep(rt, lab.name, exc.nodes[:KEPT_LOGS])
        try:
            destroy(lab.name, runtime=rt)
        except Exception as cleanup:  # keep the original error; say cleanup also failed
            raise LabError(f"deploy failed ({one_line(exc)}) and so did cleanup: {one_line(cleanup)}") from exc
        if isinstance(exc, (VpnlabError, KeyboardInterrupt, SystemExit)):
            raise
        raise LabError(f"deploy of {lab.name} failed: {one_line(exc)}") from exc
    return DeployResult(lab=lab.name, fabric_netns=netns, containers=len(lab.nodes), seconds=time.monotonic() - started)


def _refuse_existing(name: str, rt: Runtime) -> None:
    if rt.containers(name) or netns_exists(fabric_netns_name(name)):
        raise LabError(f"lab {name} already exists: `vpnlab destroy {name}` first, or deploy with --reconfigure")


def _container_specs(lab: Lab) -> dict[str, ContainerSpec]:
    """What each kind starts, plus the lab PKI's files for routers that use certificates: one CA per
    deploy, so it is made here rather than per node."""
    from vpnlab.kinds.registry import kind_for
    from vpnlab.pki import make_lab_pki, needs_pki

    specs = {node.name: kind_for(node).container_spec(lab, node) for node in lab.nodes}
    if needs_pki(lab):
        pki = make_lab_pki(lab)
        for node in lab.routers:
            extra = pki.files_for(lab, node)
            if extra:
                # the PEM files before the node config: the agent starts once its config is there
                specs[node.name] = dataclasses.replace(specs[node.name], files={**extra, **specs[node.name].files})
    return specs


def _bringup(
    lab: Lab,
    image: str,
    specs: dict[str, ContainerSpec],
    plan: FabricPlan,
    rt: Runtime,
    fabric: Fabric,
    progress: ProgressSink | None,
    ready_timeout: float,
) -> Bringup:
    """Containers start in the Bringup's threads; each is wired in this thread as soon as it runs
    (the fabric's netlink handle is not thread-safe, and wiring takes milliseconds)."""

    def labels(node: Node) -> dict[str, str]:
        # how to wire it again after a restart (net/portrecords.py)
        port_label = ports_label(lab, plan, node.name, configure_from_outside=not specs[node.name].has_agent)
        return {**node_labels(lab, node), LABEL_PORTS: port_label}

    def start(node: Node) -> ContainerInfo:
        return rt.start(container_name(lab.name, node.name), specs[node.name].image or image, specs[node.name],
                        labels(node))

    def wire(node: Node, info: ContainerInfo) -> None:
        try:
            for port in plan.ports_of(node.name):
                mac = interface_mac(lab.name, port.alias)
                fabric.attach(port.bridge, port.port, port.alias, info.netns_path, port.ifname, mac)
            if not specs[node.name].has_agent:  # hosts: no agent to configure them
                for iface in node.interfaces:
                    configure_interface(info.netns_path, iface.name, iface.address, node.gateway)
        except (NetlinkError, OSError, LookupError, ValueError) as exc:
            raise LabError(f"cannot wire node {node.name}: {one_line(exc)}") from exc

    return Bringup(lab, rt, start=start, wire=wire, summary=agent_summary,
                   has_agent=lambda n: specs[n.name].has_agent, ready_timeout=ready_timeout, report=progress)


def wait_tunnels(lab: Lab, runtime: Runtime | None = None, progress: ProgressSink | None = None) -> None:
    """Return once every configured tunnel of a running lab is up at both ends (measurements call
    this before their first flow); LabError naming the ones that are not, after the tunnels' time-out."""
    rt = _runtime(runtime)
    infos = {c.node: c for c in rt.containers(lab.name) if c.kind != "host" and c.state == "running"}
    missing = sorted(n.name for n in lab.routers if n.name not in infos)
    if missing:
        raise LabError(f"lab {lab.name}: routers {', '.join(missing)} are not running")
    up = Bringup(lab, rt, start=lambda n: infos[n.name], wire=lambda n, i: None, summary=agent_summary,
                 has_agent=lambda n: n.name in infos, report=progress)
    up.attach({n.name: infos.get(n.name) for n in lab.nodes})  # hosts: nothing to wait for
    up.run()


def agent_summary(info: ContainerInfo, timeout: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """The agent's `summary` answer: readiness, bring-up phase and one state per configured tunnel."""
    return _ask(info, "summary", timeout)


def agent_status(info: ContainerInfo, timeout: float = STATUS_TIMEOUT_S) -> dict[str, Any]:
    """The agent's `status` answer, asked on its control socket: the same request `ctl status`
    sends, without a process per poll."""
    return _ask(info, "status", timeout)


def _ask(info: ContainerInfo, command: str, timeout: float) -> dict[str, Any]:
    """One control request. The socket is found inside the container's root with
    openat2(RESOLVE_IN_ROOT) (runtime/inroot.py says why), so no symlink the container plants can
    lead the host anywhere else."""
    from vpnlab_agent.config import CONTROL_SOCKET
    from vpnlab_agent.control import ControlError, request

    from vpnlab.runtime.inroot import socket_in_root

    if not info.pid:
        raise LabError(f"container {info.name} is not running")
    try:
        with socket_in_root(f"/proc/{info.pid}/root", CONTROL_SOCKET) as path:
            result = request(path, command, timeout=timeout)
    except FileNotFoundError:
        raise LabError(f"agent not reachable: no socket {CONTROL_SOCKET} in {info.name}") from None
    except ControlError as exc:
        raise LabError(str(exc)) from None
    if not isinstance(result, dict):
        raise LabError(f"agent in {info.name} answered {command} with {type(result).__name__}")
    return result


def destroy(name: str, runtime: Runtime | None = None) -> DestroyResult:
    """Remove the lab's containers (by label, in parallel) and its fabric netns. No-op when absent.
    The lab creates nothing in the host namespace (no links, no iptables rules, no files), so
    there is nothing else to remove."""
    check_lab_name(name)
    rt = _runtime(runtime)
    containers = rt.containers(name)
    if containers:
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vpnlab-rm") as pool:
            list(pool.map(lambda c: rt.remove(c.name), containers))
    try:
        removed_ns = remove_fabric(fabric_netns_name(name))
    except OSError as exc:
        raise LabError(f"cannot remove netns {fabric_netns_name(name)}: {exc.strerror or exc}") from exc
    return DestroyResult(lab=name, containers_removed=len(containers), netns_removed=removed_ns)


def node_logs(lab: str, node: str, tail: int | None = None, runtime: Runtime | None = None) -> tuple[str, str]:
    """(log text, where it came from) of a node: see nodelogs.read."""
    from vpnlab import nodelogs

    return nodelogs.read(check_lab_name(lab), node, tail, _runtime(runtime))


def lab_names(runtime: Runtime | None = None) -> list[str]:
    """Labs with containers or a leftover fabric netns."""
    rt = _runtime(runtime)
    names = {c.lab for c in rt.containers() if c.lab}
    names |= {ns.removeprefix("vpnlab-") for ns in list_netns() if ns.startswith("vpnlab-")}
    return sorted(n for n in names if LAB_NAME.match(n))


def destroy_all(runtime: Runtime | None = None) -> list[DestroyResult]:
    rt = _runtime(runtime)
    return [destroy(name, runtime=rt) for name in lab_names(rt)]


def list_labs(runtime: Runtime | None = None) -> list[LabSummary]:
    rt = _runtime(runtime)
    by_lab: dict[str, list[ContainerInfo]] = {}
    for c in rt.containers():
        by_lab.setdefault(c.lab, []).append(c)
    result = []
    for name in lab_names(rt):
        cs = by_lab.get(name, [])
        result.append(
            LabSummary(
                name=name,
                topology=cs[0].topology if cs else "",
                nodes=len(cs),
                running=sum(c.state == "running" for c in cs),
                fabric_present=netns_exists(fabric_netns_name(name)),
            )
        )
    return result


def labs_deployed_from(topology: str | Path, runtime: Runtime | None = None) -> list[str]:
    """Names of the running labs whose containers say they came from this topology file."""
    source = str(Path(topology).resolve())
    return sorted({c.lab for c in _runtime(runtime).containers() if c.topology == source and c.lab})


def inspect_lab(
    name: str, runtime: Runtime | None = None, *, node: str | None = None, detail: bool | None = None
) -> LabView:
    """The lab's nodes with their addresses and their agents' summaries; with `detail` (by default
    for labs of up to DETAIL_ROUTERS routers, and for one `node`) also each agent's full status."""
    check_lab_name(name)
    rt = _runtime(runtime)
    containers = rt.containers(name)
    netns = fabric_netns_name(name)
    if not containers and not netns_exists(netns):
        raise LabError(f"no lab {name} is running (labs: {', '.join(lab_names(rt)) or 'none'})")
    if node is not None:
        chosen = [c for c in containers if c.node == node]
        if not chosen:
            raise LabError(f"lab {name} has no node {node!r} (nodes: {', '.join(sorted(c.node for c in containers))})")
        containers = chosen
    if detail is None:
        detail = node is not None or sum(c.kind != "host" for c in containers) <= DETAIL_ROUTERS

    def view(c: ContainerInfo) -> NodeView:
        nv = NodeView(name=c.node, role=c.role, kind=c.kind, container=c.name, state=c.state)
        if c.state != "running" or not c.pid:
            nv.problem = f"{c.state}: start it with `vpnlab start {name} {c.node}`"
            return nv
        try:
            nv.addresses = interface_addresses(c.netns_path)
        except (OSError, NetlinkError) as exc:
            nv.problem = f"cannot read addresses: {one_line(exc)}"
        nv.unwired = missing_interfaces(c, port_records(rt.labels(c.name)))
        if nv.unwired:  # restarted outside vpnlab: nothing brings the veths back by itself
            nv.problem = heal_hint(name, c.node)
            return nv
        if c.kind != "host":
            try:
                nv.summary = agent_summary(c)
                if detail:
                    nv.agent = agent_status(c)
            except Exception as exc:
                nv.problem = one_line(exc)
        return nv

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vpnlab-inspect") as pool:
        nodes = list(pool.map(view, containers))
    return LabView(
        name=name,
        topology=containers[0].topology if containers else "",
        fabric_netns=netns,
        fabric_present=netns_exists(netns),
        nodes=sorted(nodes, key=lambda n: (n.kind == "host", _natural(n.name))),
        detail=detail,
    )


def _natural(name: str) -> tuple[tuple[int, str], ...]:
    """b2 before b10: digit runs compare as numbers."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name) if part)


def exec_node(
    lab: str,
    node: str,
    argv: list[str],
    stdout: BinaryIO,
    stderr: BinaryIO,
    runtime: Runtime | None = None,
    interactive: bool = False,
) -> int:
    """Run argv in a node, streaming its output (or on the caller's terminal when `interactive`);
    returns its exit code."""
    check_lab_name(lab)
    if not argv:
        raise LabError("exec: no command given (vpnlab exec LAB NODE -- CMD ...)")
    rt = _runtime(runtime)
    # A name no topology allows never reaches the engine's API (it becomes part of a URL path).
    info = rt.get(container_name(lab, node)) if NODE_NAME_RE.match(node) else None
    if info is None or info.lab != lab or info.node != node:
        nodes = sorted(c.node for c in rt.containers(lab))
        if not nodes:
            raise LabError(f"no lab {lab} is running")
        raise LabError(f"lab {lab} has no node {node!r} (nodes: {', '.join(nodes)})")
    if info.state != "running":
        raise LabError(f"node {node} of lab {lab} is {info.state}")
    if interactive:
        return rt.exec_interactive(info.name, argv)
    return rt.exec_stream(info.name, argv, stdout, stderr)


class _Report:
    """Steps as progress tasks; silent without a sink (bringup.py reports its own)."""

    def __init__(self, sink: ProgressSink | None) -> None:
        self._sink = sink
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        if self._sink is not None:
            self._task = self._sink.add_task(description, total=total)

    def advance(self) -> None:
        if self._sink is not None and self._task is not None:
            self._sink.update(self._task, advance=1)
