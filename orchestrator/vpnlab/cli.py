"""The `vpnlab` command. The only module that prints or exits: library errors (VpnlabError)
become one red line on stderr and exit code 1, never a traceback."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer 0.29 vendors click
from typer.core import TyperGroup
from typer.exceptions import Abort

from vpnlab.console import err, out, reported
from vpnlab.errors import VpnlabError

TUNNEL_TABLE_WIDTH = 160  # narrower than this, `inspect` lists tunnels as lines


class _OneLineErrors(TyperGroup):
    """Usage mistakes (missing argument, unknown option, bad value) as one `error:` line that
    points at --help, like every other vpnlab error, instead of click's boxed usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("standalone_mode", True) is False:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:  # a bare `vpnlab` or `vpnlab measure`: the help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err.print(f"error: {exc.format_message()}{where}", style="red", markup=False)
            sys.exit(exc.exit_code)
        except Abort:
            err.print("aborted", style="red", markup=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="vpnlab",
    help="Container lab for multi-site IPsec VPN designs: deploy a YAML topology as Docker containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Runtime(str, enum.Enum):
    docker = "docker"
    containerlab = "containerlab"


RUNTIME_HELP = "docker: vpnlab starts and wires the containers; containerlab: hand the exported lab to a containerlab binary."


class _progress:
    """rich Progress that appears with its first task: a mistake caught before any step (bad
    file, lab exists) stays one line, without the blank line an empty live display leaves."""

    def __init__(self) -> None:
        self._live: Progress | None = None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> Any:
        if self._live is None:
            self._live = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<14}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
            )
            self._live.start()
        return self._live.add_task(description, total=total, **fields)

    def update(self, task_id: Any, **fields: Any) -> None:
        if self._live is not None:
            self._live.update(task_id, **fields)

    def __enter__(self) -> _progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()


@app.command()
def deploy(
    topology: Annotated[Path, typer.Argument(help="Topology file (YAML), e.g. topologies/hub-spoke.yml.")],
    name: Annotated[
        Optional[str], typer.Option("--name", help="Run the lab under this name instead of the file's `name`.")
    ] = None,
    reconfigure: Annotated[
        bool, typer.Option("--reconfigure", help="Destroy a running lab of the same name first.")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds each agent may take to report ready after its container starts; the tunnels "
            "then get 30 s + 0.1 s per tunnel to come up.",
        ),
    ] = 60.0,
    runtime: Annotated[Runtime, typer.Option("--runtime", help=RUNTIME_HELP)] = Runtime.docker,
) -> None:
    """Build the node image if needed, then start and wire the lab."""
    from vpnlab import lab as labs

    with reported():
        if runtime is Runtime.containerlab:
            from vpnlab.runtime import containerlab as clab

            with _progress() as progress:
                done = clab.deploy(topology, name=name, reconfigure=reconfigure, progress=progress)
            out.print(f"lab [bold]{done.lab}[/] is up under containerlab: {done.containers} nodes in {done.seconds:.1f} s")
            out.print(f"  topology file {done.topology_file}; vpnlab inspect/exec {done.lab} work on it", markup=False)
            out.print(f"  vpnlab destroy {done.lab} --runtime containerlab", markup=False)
            return
        with _progress() as progress:
            result = labs.deploy(topology, name=name, reconfigure=reconfigure, progress=progress, ready_timeout=timeout)
        out.print(f"lab [bold]{result.lab}[/] is up: {result.containers} containers in {result.seconds:.1f} s")
        out.print("Look at it:", style="dim")
        out.print(f"  vpnlab inspect {result.lab}", markup=False)
        out.print(f"  vpnlab exec {result.lab} <node> -- ip addr", markup=False)
        out.print(f"  ip netns exec {result.fabric_netns} tcpdump -ni inet     # the emulated internet", markup=False)
        out.print(f"  vpnlab destroy {result.lab}", markup=False)


@app.command()
def destroy(
    target: Annotated[
        Optional[str], typer.Argument(help="Lab name, or the topology file it was deployed from.")
    ] = None,
    all_labs: Annotated[bool, typer.Option("--all", help="Destroy every vpnlab lab on this machine.")] = False,
    name: Annotated[
        Optional[str], typer.Option("--name", help="With a topology file: the name it was deployed under.")
    ] = None,
    runtime: Annotated[Runtime, typer.Option("--runtime", help=RUNTIME_HELP)] = Runtime.docker,
) -> None:
    """Remove everything a lab created (found by label and name); a no-op when nothing is left."""
    from vpnlab import lab as labs

    with reported():
        if runtime is Runtime.containerlab:
            from vpnlab.runtime import containerlab as clab

            if all_labs or target is None:
                raise VpnlabError("destroy --runtime containerlab: give the lab name or its topology file (--all is Docker only)")
            lab_name = labs.check_lab_name(name) if name else labs.resolve_lab_name(target)
            where = clab.destroy(lab_name)
            out.print(f"destroyed {lab_name} under containerlab; removed {where}", markup=False)
            return
        if all_labs == (target is not None):
            raise VpnlabError("destroy: give a lab name or topology file, or --all (not both)")
        if name is not None and target is None:
            # --all --name NAME must never mean "all": that would remove other people's labs.
            raise VpnlabError("destroy: --name goes with a topology file (vpnlab destroy FILE --name NAME), not with --all")
        if all_labs:
            results = labs.destroy_all()
        else:
            assert target is not None
            results = [labs.destroy(labs.check_lab_name(name) if name else labs.resolve_lab_name(target))]
        if not results or not any(r.found_anything for r in results):
            hint = ""
            if target is not None and name is None and Path(target).is_file():
                # deployed from this file under another name (--name): say which
                others = labs.labs_deployed_from(target)
                hint = f" (labs from this file: {', '.join(others)}; add --name)" if others else ""
            out.print("nothing to destroy" + (f": no lab {results[0].lab}" if results else "") + hint, markup=False)
        for r in results:
            if r.found_anything:
                out.print(f"destroyed {r.lab}: {r.containers_removed} containers, fabric netns {'removed' if r.netns_removed else 'absent'}")


@app.command()
def inspect(
    lab: Annotated[Optional[str], typer.Argument(help="Lab name; without it, list the running labs.")] = None,
    node: Annotated[Optional[str], typer.Argument(help="One node of the lab: its full status.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the running labs, or one lab's nodes: state, addresses, agent readiness, tunnels and SAs.
    A large lab shows one summary row per node; `inspect LAB NODE` shows one router in full."""
    from vpnlab import lab as labs

    with reported():
        if lab is None:
            summaries = labs.list_labs()
            if as_json:
                out.print_json(json.dumps({"labs": [dataclasses.asdict(s) for s in summaries]}))
                return
            if not summaries:
                out.print("no labs running")
                return
            table = Table("lab", "nodes", "running", "fabric", "topology")
            for s in summaries:
                table.add_row(s.name, str(s.nodes), str(s.running), "yes" if s.fabric_present else "no", s.topology)
            out.print(table)
            return
        view = labs.inspect_lab(labs.resolve_lab_name(lab), node=node)
        if as_json:
            data = dataclasses.asdict(view)
            for nv, obj in zip(view.nodes, data["nodes"]):
                obj["up"] = nv.up
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            return
        if not view.detail:  # a large lab: the totals first, then one row per node, then what is not up
            totals, *rest = _summary_lines(view)
            out.print(totals, markup=False)
            out.print(_lab_table(view))
            for line in rest:
                out.print(line, markup=False)
            return
        out.print(_lab_table(view))
        if any((n.agent or {}).get("ike_sas") for n in view.nodes):
            if out.width >= TUNNEL_TABLE_WIDTH:
                out.print(_tunnel_table(view))
            else:  # a table this wide would be folded into an unreadable column of fragments
                out.print("tunnels", style="italic")
                for line in _tunnel_lines(view):
                    out.print(line, markup=False)
        if any(_mesh_status(n).get("enabled") for n in view.nodes):
            out.print(_mesh_table(view))
            for line in _mesh_pair_lines(view):
                out.print(line, markup=False)
        from vpnlab.inspect_contexts import contexts_table

        ctx_table = contexts_table(view)
        if ctx_table is not None:
            out.print(ctx_table)
        from vpnlab.inspect_clusters import clusters_table

        cluster_table = clusters_table(view)
        if cluster_table is not None:
            out.print(cluster_table)
        if any(_nat_status(n) for n in view.nodes):
            out.print(_nat_table(view))
        for note in _lab_notes(view):
            out.print(note, style="yellow", markup=False)


def _lab_table(view: Any) -> Table:
    table = Table(
        title=f"lab {view.name}, fabric netns {view.fabric_netns}{'' if view.fabric_present else ' (MISSING)'}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("node", no_wrap=True)
    table.add_column("role")
    table.add_column("kind", no_wrap=True)
    table.add_column("up")
    table.add_column("addresses", no_wrap=True)
    for header in ("engine", "tunnels up", "IKE", "child"):
        table.add_column(header, overflow="fold")
    for n in view.nodes:
        # A large lab: one line per node (its WAN or first address), so 200 rows stay 200 lines.
        shown = sorted(n.addresses.items())
        if not view.detail:
            shown = [(k, v) for k, v in shown if k == "wan0"] or shown[:1]
        addrs = "\n".join(f"{ifname} {' '.join(a)}" for ifname, a in shown if a)
        summary = n.summary or {}
        tunnels = summary.get("tunnels") or {}
        up = sum(state == "up" for state in tunnels.values())
        table.add_row(
            n.name,
            n.role,
            n.kind,
            "[green]yes[/]" if n.up else f"[red]no[/] ({'unwired' if n.unwired else n.state if n.state != 'running' else summary.get('phase', '?')})",
            addrs,
            str(summary.get("dataplane") or "-") if n.summary else "",
            (f"{up}/{len(tunnels)}" if up == len(tunnels) else f"[yellow]{up}/{len(tunnels)}[/]") if tunnels else "",
            str(summary.get("ike_sas", "")) if n.summary else "",
            str(summary.get("child_sas", "")) if n.summary else "",
        )
    return table


def _summary_lines(view: Any) -> list[str]:
    """Under a large lab's node table: totals, what is not up, and how to see one router in full."""
    routers = [n for n in view.nodes if n.kind != "host"]
    tunnels = {(n.name, peer): state for n in routers for peer, state in ((n.summary or {}).get("tunnels") or {}).items()}
    down = sorted(f"{a}→{b} ({state})" for (a, b), state in tunnels.items() if state != "up")
    half_open = sum(int((n.summary or {}).get("half_open") or 0) for n in routers)
    lines = [
        f"{sum(n.up for n in routers)} of {len(routers)} routers ready; {len(tunnels) - len(down)} of "
        f"{len(tunnels)} tunnel ends up; {half_open} half-open IKE SAs",
    ]
    if down:
        lines.append(f"not up: {', '.join(down[:8])}" + (f" and {len(down) - 8} more" if len(down) > 8 else ""))
    lines += [f"{n.name}: {note}" for n in routers for note in _notes_of(n)][:10]
    lines.append(f"one router in full (tunnels, selectors, SPIs, mesh): vpnlab inspect {view.name} NODE")
    return lines


@dataclasses.dataclass(frozen=True)
class _SaRow:
    """One IKE SA, or one child SA under it, as inspect shows it (both the table and the lines)."""

    router: str
    peer: str
    child: bool
    state: str
    where: str  # outer addresses of an IKE SA, selectors of a child SA
    algorithms: str
    spis: tuple[str, str]  # IKE: initiator/responder; child: in/out
    traffic_in: tuple[str, ...]  # (size, packets); () for an IKE SA
    traffic_out: tuple[str, ...]
    age: str


def _sa_rows(view: Any) -> Iterator[_SaRow]:
    for n in view.nodes:
        agent = n.agent or {}
        for ike in agent.get("ike_sas") or []:
            peer = str(ike.get("peer", "?"))
            yield _SaRow(
                n.name, peer, False, str(ike.get("state", "?")),
                f"{ike.get('local', '?')} → {ike.get('remote', '?')}{_nat_note(ike)}", str(ike.get("algorithms", "")),
                (str(ike.get("spi_i", "")), str(ike.get("spi_r", ""))), (), (), _age(ike.get("age_s")),
            )
            for child in agent.get("child_sas") or []:
                if child.get("peer") != ike.get("peer"):
                    continue
                yield _SaRow(
                    n.name, peer, True, str(child.get("state", "installed")),
                    f"{', '.join(child.get('local_ts', []))} ⇄ {', '.join(child.get('remote_ts', []))}",
                    str(child.get("algorithm", "")), (str(child.get("spi_in", "")), str(child.get("spi_out", ""))),
                    _traffic(child, "in"), _traffic(child, "out"), _age(child.get("age_s")),
                )


def _nat_note(ike: dict[str, Any]) -> str:
    """What NAT detection (RFC 7296 §2.23) found for one IKE SA."""
    nat = ike.get("nat") or {}
    found = [w for w, key in (("we are behind NAT", "local"), ("peer behind NAT", "remote")) if nat.get(key)]
    return f" ({', '.join(found)})" if found else ""


def _tunnel_table(view: Any) -> Table:
    """One row per IKE SA and, under it, one per child SA: what a VPN engineer checks first."""
    table = Table(title="tunnels", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("router", "peer", "state", "outer / selectors", "algorithms", "SPIs in/out", "in", "out", "age"):
        # On a narrow terminal, fold long values onto more lines rather than cut them to "…".
        table.add_column(header, no_wrap=header in ("router", "peer", "SPIs in/out"), overflow="fold")
    for row in _sa_rows(view):
        table.add_row(
            "" if row.child else row.router,
            "  └ child" if row.child else row.peer,
            _state_text(row.state),
            row.where,
            row.algorithms,
            " / ".join(row.spis) if row.child else "\n".join(row.spis),
            "\n".join(row.traffic_in),
            "\n".join(row.traffic_out),
            row.age,
        )
    return table


def _mesh_status(node: Any) -> dict[str, Any]:
    return ((node.agent or {}).get("services") or {}).get("mesh") or {}


def _mesh_table(view: Any) -> Table:
    """Advanced Mesh VPN per router: shortcuts in use against the licence limit, and why any was not built."""
    table = Table(title="mesh shortcuts", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("router", "shortcuts / limit", "peer", "state", "idle", "not built (why)"):
        table.add_column(header, no_wrap=header in ("router", "peer"))
    for n in view.nodes:
        mesh = _mesh_status(n)
        if not mesh:
            continue
        if not mesh.get("enabled"):
            table.add_row(n.name, "off", "", "", "", "")
            continue
        usage = f"{mesh.get('active', 0)} / {mesh.get('limit', '?')}"
        refused = "\n".join(f"{r.get('peer', '?')}: {r.get('reason', r.get('code', '?'))}" for r in (mesh.get("refused") or [])[-3:])
        shortcuts = mesh.get("shortcuts") or []
        if not shortcuts:
            table.add_row(n.name, usage, "-", "", "", refused)
        for i, cut in enumerate(shortcuts):
            table.add_row(
                n.name if i == 0 else "",
                usage if i == 0 else "",
                str(cut.get("peer", "?")),
                _state_text(str(cut.get("state", "?"))),
                _age(cut.get("idle_s")),
                refused if i == 0 else "",
            )
    return table


def _mesh_pair_lines(view: Any) -> list[str]:
    """One line per branch pair that a NAT keeps on the hub (both ends record it; shown once)."""
    lines: list[str] = []
    for n in view.nodes:
        for r in _mesh_status(n).get("refused") or []:
            if r.get("line") and r["line"] not in lines:
                lines.append(str(r["line"]))
    return lines


def _nat_status(node: Any) -> dict[str, Any]:
    return ((node.agent or {}).get("services") or {}).get("nat") or {}


def _nat_table(view: Any) -> Table:
    """NAT devices: type, mapping timeout, and each live UDP mapping (inside → public, for which remote)."""
    table = Table(title="NAT devices", title_justify="left", box=box.SIMPLE_HEAD)
    for header in ("device", "type", "timeout", "behind it", "inside", "public", "remote", "expires"):
        table.add_column(header, no_wrap=True)
    for n in view.nodes:
        nat = _nat_status(n)
        if not nat:
            continue
        head = [n.name, str(nat.get("type", "?")), f"{nat.get('mapping_timeout_s', '?')} s", ", ".join(nat.get("branches") or [])]
        mappings = nat.get("mappings") or []
        if not mappings:
            table.add_row(*head, "-", "", "", "")
        for i, m in enumerate(mappings):
            table.add_row(*(head if i == 0 else ["", "", "", ""]), str(m.get("inside")), str(m.get("public")), str(m.get("remote")), _age(m.get("timeout_s")))
    return table


def _tunnel_lines(view: Any) -> list[str]:
    """The tunnel table's content as one line per SA, for terminals too narrow for the table."""
    lines = []
    for row in _sa_rows(view):
        spis = f"SPIs {'/'.join(row.spis)}"
        if row.child:
            lines.append(
                f"    └ child {row.state}  {row.where}  {row.algorithms}  {spis}  "
                f"in {' '.join(row.traffic_in)}  out {' '.join(row.traffic_out)}  {row.age}"
            )
        else:
            lines.append(f"  {row.router} → {row.peer}  {row.state}  {row.where}  {row.algorithms}  {spis}  {row.age}")
    return lines


def _state_text(state: str) -> str:
    return f"[green]{state}[/]" if state.lower() in ("established", "installed", "up") else f"[yellow]{state}[/]"


def _traffic(child: dict[str, Any], way: str) -> tuple[str, str]:
    """(size, packets) one way, e.g. ("1.5 kB", "3 pkt")."""
    octets, packets = child.get(f"bytes_{way}", 0) or 0, child.get(f"packets_{way}", 0) or 0
    for unit in ("B", "kB", "MB", "GB"):
        if octets < 1000 or unit == "GB":
            break
        octets /= 1000
    size = f"{octets:.0f} {unit}" if unit == "B" else f"{octets:.1f} {unit}"
    return size, f"{packets} pkt"


def _age(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _notes_of(n: Any) -> list[str]:
    return ([n.problem] if n.problem else []) + [str(e) for e in (n.agent or n.summary or {}).get("errors") or []]


def _lab_notes(view: Any) -> list[str]:
    return [f"{n.name}: {note}" for n in view.nodes for note in _notes_of(n)]


@app.command()
def logs(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name, e.g. hub or br1.")],
    tail: Annotated[Optional[int], typer.Option("--tail", min=1, help="Only the last N lines.")] = None,
) -> None:
    """A node's log: the agent's lines (or a host's output); after a failed deploy, the copy it kept."""
    from vpnlab import lab as labs

    with reported():
        text, source = labs.node_logs(lab, node, tail)
        err.print(f"# {source}", style="dim", markup=False)
        sys.stdout.write(text + ("\n" if text and not text.endswith("\n") else ""))


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True},
)
def exec_(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name, e.g. br1 or br1-h1.")],
    command: Annotated[list[str], typer.Argument(help="Command and its arguments (after --).")],
) -> None:
    """Run a command in a node and stream its output; exits with the command's exit code."""
    from vpnlab import lab as labs

    with reported():
        argv = list(command)
        if argv[:1] == ["--"]:  # click hands the separator through when options are not parsed
            argv = argv[1:]
        # On a terminal, give the command the terminal (a shell works); else stream its output.
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
        code = labs.exec_node(lab, node, argv, sys.stdout.buffer, sys.stderr.buffer, interactive=interactive)
    raise typer.Exit(code)


def _lifecycle(verb: str, lab: str, node: str, wait: bool) -> None:
    from vpnlab import lab as labs
    from vpnlab import lifecycle
    from vpnlab.runtime.docker import DockerRuntime

    with reported():
        labs.check_lab_name(lab)
        rt = DockerRuntime()
        if verb == "stop":
            info = lifecycle.stop_node(lab, node, rt)
            out.print(f"{node} is {info.state}", markup=False)
            return
        action = lifecycle.restart_node if verb == "restart" else lifecycle.start_node
        seconds = action(lab, node, rt, wait=wait)
        what = "ready" if wait else "started"
        out.print(f"{node} is {what}, wired again" + (f" ({seconds:.1f} s)" if seconds else ""), markup=False)


_WAIT = typer.Option("--wait/--no-wait", help="Wait until the node's agent reports ready.")


@app.command()
def restart(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
    wait: Annotated[bool, _WAIT] = True,
) -> None:
    """Restart a node's container and wire it again (interfaces, addresses, config); its tunnels come back by themselves."""
    _lifecycle("restart", lab, node, wait)


@app.command()
def stop(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
) -> None:
    """Stop a node's container (a router's agent first closes its tunnels)."""
    _lifecycle("stop", lab, node, False)


@app.command()
def start(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
    wait: Annotated[bool, _WAIT] = True,
) -> None:
    """Start a stopped node and wire it again; also heals a container restarted outside vpnlab."""
    _lifecycle("start", lab, node, wait)


link_app = typer.Typer(
    cls=_OneLineErrors,
    help="Link faults on a node's interface: down/up, rate limit; delay/loss where the kernel has netem.",
    no_args_is_help=True,
)
app.add_typer(link_app, name="link")
_IFACE = typer.Argument(help="Interface in the node (wan0, lan0, ... ; hosts: eth0).")


def _link_runtime(lab: str) -> Any:
    from vpnlab import lab as labs
    from vpnlab.runtime.docker import DockerRuntime

    labs.check_lab_name(lab)
    return DockerRuntime()


@link_app.command("down")
def link_down(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
    iface: Annotated[str, _IFACE] = "wan0",
) -> None:
    """Take a link down (the node sees no carrier, like a pulled cable)."""
    from vpnlab import linkfault

    with reported():
        linkfault.set_link(lab, node, iface, False, _link_runtime(lab))
        out.print(f"{node}:{iface} is down", markup=False)


@link_app.command("up")
def link_up(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
    iface: Annotated[str, _IFACE] = "wan0",
) -> None:
    """Bring a link up again."""
    from vpnlab import linkfault

    with reported():
        linkfault.set_link(lab, node, iface, True, _link_runtime(lab))
        out.print(f"{node}:{iface} is up", markup=False)


@link_app.command("set")
def link_set(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
    iface: Annotated[str, _IFACE] = "wan0",
    rate: Annotated[Optional[str], typer.Option("--rate", help="Rate limit both ways, e.g. 10mbit (tbf).")] = None,
    delay: Annotated[Optional[str], typer.Option("--delay", help="Added delay, e.g. 20ms (needs netem).")] = None,
    loss: Annotated[Optional[str], typer.Option("--loss", help="Random loss, e.g. 1% (needs netem).")] = None,
    mtu: Annotated[Optional[int], typer.Option("--mtu", help="MTU of both ends of the link, e.g. 1000.")] = None,
) -> None:
    """Shape a link both ways (replaces the shaping set before), or set its MTU."""
    from vpnlab import linkfault

    with reported():
        runtime = _link_runtime(lab)
        if mtu is not None:
            linkfault.set_mtu(lab, node, iface, mtu, runtime)
        if mtu is None or rate or delay or loss is not None:
            linkfault.shape_link(lab, node, iface, runtime, rate=rate, delay=delay, loss=loss)
        parts = [f"{k} {v}" for k, v in (("mtu", mtu), ("rate", rate), ("delay", delay), ("loss", loss)) if v]
        out.print(f"{node}:{iface}: {', '.join(parts)}", markup=False)


@link_app.command("clear")
def link_clear(
    lab: Annotated[str, typer.Argument(help="Lab name.")],
    node: Annotated[str, typer.Argument(help="Node name.")],
    iface: Annotated[str, _IFACE] = "wan0",
) -> None:
    """Remove shaping, put back the lab's MTU and bring the link up."""
    from vpnlab import linkfault

    with reported():
        linkfault.clear_link(lab, node, iface, _link_runtime(lab))
        out.print(f"{node}:{iface}: no faults", markup=False)


@link_app.command("show")
def link_show(lab: Annotated[str, typer.Argument(help="Lab name.")]) -> None:
    """Every link of a lab: up or down, and its shaping."""
    from vpnlab import linkfault

    with reported():
        table = Table("node", "interface", "fabric port", "state", "shaping", "mtu", box=box.SIMPLE_HEAD)
        for v in linkfault.show_links(lab, _link_runtime(lab)):
            table.add_row(v.node, v.ifname, v.port, "[green]up[/]" if v.up else "[red]down[/]", v.shaping or "-",
                          str(v.mtu))
        out.print(table)


@app.command()
def graph(
    topology: Annotated[Path, typer.Argument(help="Topology file (YAML).")],
    output: Annotated[
        Optional[Path],
        typer.Option("-o", "--output", help="Write a picture: .png, .svg, .dot or .mmd (mermaid). Default: dot on stdout."),
    ] = None,
) -> None:
    """Draw the topology: internet, routers, LANs, hosts and the hub tunnels."""
    from vpnlab import graph as graphs
    from vpnlab.topology import load_topology

    with reported():
        lab = load_topology(topology)
        if output is None:
            sys.stdout.write(graphs.render(lab, "dot").decode())
            return
        data = graphs.render(lab, graphs.fmt_from_suffix(output))
        try:
            output.write_bytes(data)
        except OSError as exc:
            raise VpnlabError(f"cannot write {output}: {exc.strerror or exc}") from None
        out.print(f"wrote {output}", markup=False)


@app.command("export")
def export(
    topology: Annotated[Path, typer.Argument(help="Topology file (YAML).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the files (new, empty, or an earlier export).")],
    fmt: Annotated[str, typer.Option("--format", help="Output format; containerlab is the only one.")] = "containerlab",
    hosts: Annotated[
        Optional[list[str]],
        typer.Option("--host", help="NAME=ADDRESS of one machine (repeat): one file per host, nodes split automatically."),
    ] = None,
    placement: Annotated[
        Optional[Path], typer.Option("--placement", help="YAML file: hosts, their addresses, and which node runs where.")
    ] = None,
    image_tag: Annotated[
        Optional[str], typer.Option("--image", help="Node image to name (default: this tree's vpnlab-node tag).")
    ] = None,
    vni_base: Annotated[
        Optional[int], typer.Option("--vni-base", min=1, help="First VXLAN VNI (default: picked from the lab name).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Export under this lab name instead of the file's `name`.")] = None,
) -> None:
    """Write a containerlab topology that runs the same lab, on one host or split over several."""
    from vpnlab import lab as labs
    from vpnlab.export import containerlab as clab
    from vpnlab.export.placement import load_placement, parse_hosts, place

    with reported():
        if fmt != "containerlab":
            raise VpnlabError(f"export: unknown --format {fmt!r} (formats: containerlab)")
        if hosts and placement is not None:
            raise VpnlabError("export: give --host NAME=ADDRESS ... or --placement FILE, not both")
        lab = labs.load_lab(topology, name)
        plan = None
        if placement is not None:
            plan = load_placement(placement, lab)
        elif hosts:
            plan = place(lab, parse_hosts(hosts))
        if image_tag is None:
            from vpnlab.image import node_tag

            image_tag = node_tag()
        result = clab.export_lab(lab, image_tag, plan, vni_base=vni_base)
        written = clab.write_export(result, output)
        for f, path in zip(result.files, written):
            nodes = sum(1 for n in f.topology["topology"]["nodes"].values() if n.get("labels", {}).get("vpnlab.node"))
            where = f" for host {f.host.name} ({f.host.address})" if f.host else ""
            out.print(f"wrote {path}{where}: {nodes} nodes, {len(f.topology['topology'].get('links', []))} links", markup=False)
        for host in result.empty_hosts:
            out.print(f"host {host}: no nodes placed there, no file", style="yellow", markup=False)
        if result.vxlan:
            low = min(result.segment_mtu[v.segment] for v in result.vxlan)
            out.print(f"{len(result.vxlan)} VXLAN links join the hosts; MTU {low} on the segments they carry (see the files' comments)", markup=False)
        out.print(f"run it (containerlab >= {clab.CLAB_MIN_VERSION}, as root, with image {image_tag} on each host):", style="dim", markup=False)
        for f, path in zip(result.files, written):
            on = f"on {f.host.name}: " if f.host else ""
            out.print(f"  {on}containerlab deploy -t {path.relative_to(output) if f.host else path}", markup=False)


@app.command()
def image(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when the image is up to date.")] = False,
) -> None:
    """Build the node image (Debian packages via debootstrap, plus the agent) unless it is current."""
    from vpnlab.environment import check_docker, check_privileges
    from vpnlab.image import ensure_image

    with reported():
        check_privileges()
        check_docker()
        with _progress() as progress:
            tag = ensure_image(force=force, progress=progress)
        out.print(tag, markup=False)


from vpnlab.measure.cli import measure_app  # noqa: E402 - registered after the commands above

app.add_typer(measure_app, name="measure")


def main() -> None:
    app(prog_name="vpnlab")
