"""`vpnlab measure ...`: the Typer group cli.py registers. Printing happens here and in cli.py only,
on the consoles of vpnlab.console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from vpnlab.console import err, out, reported

measure_app = typer.Typer(
    name="measure",
    help="Measure a lab: hub traffic with and without Advanced Mesh VPN, shortcut state, cluster balance.",
    no_args_is_help=True,
)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


@measure_app.command("hub-traffic")
def hub_traffic_cmd(
    topology: Annotated[Path, typer.Argument(help="Topology file, e.g. topologies/mesh.yml.")],
    pairs: Annotated[str, typer.Option(help="'all' or 'br1:br2,br3:br1' (first sends to second).")] = "all",
    duration: Annotated[float, typer.Option(help="Seconds each iperf3 flow runs.")] = 10.0,
    udp: Annotated[bool, typer.Option("--udp", help="UDP flows (loss and reordering) instead of TCP.")] = False,
    bitrate: Annotated[str, typer.Option(help="iperf3 -b per flow, e.g. 20M.")] = "20M",
    only: Annotated[Optional[str], typer.Option(help="Run just 'off' (star) or 'on' (mesh).")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Write the full result here.")] = Path("hub-traffic.json"),
    png: Annotated[Path, typer.Option("--png", help="Plot of hub throughput over time, both runs.")] = Path("hub-traffic.png"),
) -> None:
    """Run the same iperf3 flows on the star (mesh off) and with mesh on; what crossed the hub."""
    from vpnlab.errors import VpnlabError
    from vpnlab.measure import hub_traffic as ht
    from vpnlab.measure.report import STEPS

    with reported():
        if only not in (None, "off", "on"):
            raise VpnlabError("--only: 'off' or 'on'")
        result = ht.hub_traffic(topology, pairs=pairs, duration=duration, udp=udp, bitrate=bitrate,
                                modes=(only,) if only else ("off", "on"), say=lambda s: err.print(s, markup=False))
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        ht.plot(result, png)
    table = Table(box=box.SIMPLE_HEAD, title="hub traffic per pair")
    for col in ("pair", "mesh", "hub MB", "shortcut MB", "hub share", "pkts via hub", "setup ms",
                "loss" if udp else "retr", "reorder" if udp else "Mbit/s", "note"):
        table.add_column(col, justify="left" if col in ("pair", "mesh", "note") else "right")
    for mode, run in result["runs"].items():
        for p in run["pairs"]:
            ip = p["iperf"]
            share = "-" if p["hub_share_pct"] is None else f"{p['hub_share_pct']:.2f} %"
            table.add_row(p["pair"], mode, _mb(p["hub_bytes"]), _mb(p["shortcut_bytes"]), share,
                          str(p["hub_packets"]), "-" if p["setup_ms"] is None else f"{p['setup_ms']:.1f}",
                          str(ip.get("lost" if udp else "retransmits", "-")),
                          str(ip.get("out_of_order", "-")) if udp else str(ip.get("mbps", "-")),
                          (ip.get("error") or "; ".join(p["refused"]) or "")[:60])
    out.print(table)
    for mode, run in result["runs"].items():
        out.print(f"mesh {mode}: hub forwarded {_mb(run['hub_total_bytes'])} MB "
                  f"({run['hub_total_packets']} packets) between branches")
    if "on" in result["runs"]:
        tl = Table(box=box.SIMPLE_HEAD, title="shortcut setup, ms after the session was seen at B")
        tl.add_column("pair")
        for _, label in STEPS:
            tl.add_column(label, justify="right")
        for p in result["runs"]["on"]["pairs"]:
            rel = p["timeline_ms"]
            tl.add_row(p["pair"], *("-" if rel.get(k) is None else f"{rel[k]:.1f}" for k, _ in STEPS))
        out.print(tl)
    out.print(f"wrote {json_out} and {png}")


@measure_app.command("shortcuts")
def shortcuts_cmd(
    lab: Annotated[str, typer.Argument(help="Name of a running lab.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Mesh state of every router: shortcuts, why some were not built, hub pair counters."""
    from vpnlab import lab as labs
    from vpnlab.measure.report import mesh_of

    with reported():
        view = labs.inspect_lab(labs.resolve_lab_name(lab), detail=True)  # the mesh state is in the full status
    state = {n.name: mesh_of(n.agent or {}) for n in view.nodes if n.kind != "host"}
    if as_json:
        out.print_json(json.dumps(state))
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"mesh in lab {view.name}")
    for col in ("router", "mesh", "limit", "shortcuts", "not built (why)"):
        table.add_column(col)
    for name, m in state.items():
        if not m:
            table.add_row(name, "-", "-", "", "")
            continue
        if m.get("role") == "hub":
            pairs = [f"{p['src']}>{p['dst']} {p['packets']} pkts" for p in m.get("hub_pairs", []) if p["packets"]]
            table.add_row(name, "relay" if m.get("enabled") else "off", str(m.get("limit")), "\n".join(pairs),
                          "\n".join(f"{r['peer']}: {r['reason']}" for r in m.get("refused", [])[-5:]))
            continue
        scs = [f"{s['peer']} {s['state']}" + (f" idle {s['idle_s']} s" if s.get("idle_s") is not None else "")
               for s in m.get("shortcuts", [])]
        refused = [f"{r['peer']}: {r['reason']}" for r in m.get("refused", [])[-5:]]
        table.add_row(name, "on" if m.get("enabled") else "off", str(m.get("limit")), "\n".join(scs), "\n".join(refused))
    out.print(table)


@measure_app.command("contexts")
def contexts_cmd(
    topology: Annotated[Path, typer.Argument(help="Topology file with routing contexts, e.g. topologies/hsvpn.yml.")],
    methods: Annotated[str, typer.Option(help="Comma-separated: hsvpn, tunnel-in-tunnel, per-network.")] =
        "hsvpn,tunnel-in-tunnel,per-network",
    duration: Annotated[float, typer.Option(help="Seconds of the iperf3 flows (one per context, at once).")] = 5.0,
    outage: Annotated[float, typer.Option(help="Seconds one branch's uplink stays down (DPD declares a peer dead after ~25 s).")] = 30.0,
    json_out: Annotated[Path, typer.Option("--json", help="Write the full result here.")] = Path("contexts.json"),
    png: Annotated[Path, typer.Option("--png", help="One panel per figure, the methods side by side.")] =
        Path("contexts.png"),
) -> None:
    """Deploy the lab with each context method in turn: SA counts, MTU, overhead, throughput, setup, rekey."""
    from vpnlab.errors import VpnlabError
    from vpnlab.measure import contexts as mc

    with reported():
        chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
        bad = [m for m in chosen if m not in mc.METHODS]
        if bad or not chosen:
            raise VpnlabError(f"--methods: unknown {', '.join(bad) or 'nothing'} (choose from {', '.join(mc.METHODS)})")
        result = mc.measure_contexts(topology, methods=chosen, duration=duration, outage_s=outage,
                                     say=lambda s: err.print(s, markup=False))
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        mc.plot(result, png)
    out.print(contexts_table(result))
    out.print(f"wrote {json_out} and {png}")


def contexts_table(result: dict[str, Any]) -> Table:
    runs = result["runs"]
    table = Table(box=box.SIMPLE_HEAD, title=f"{result['sites']} branch sites x {result['contexts']} contexts")
    table.add_column("figure")
    for m in runs:
        table.add_column(m, justify="right")
    f = result["formulas"]

    def row(label: str, get: Any) -> None:
        table.add_row(label, *(get(m, r) for m, r in runs.items()))

    row("IKE SAs (formula)", lambda m, r: f"{r['counts']['ike_sas']} ({f[m]['ike_sas']})")
    row("child SAs (formula)", lambda m, r: f"{r['counts']['child_sas']} ({f[m]['child_sas']})")
    row("inner tunnels (formula)", lambda m, r: f"{r['counts']['inner_tunnels']} ({f[m]['inner_tunnels']})")
    row("largest inner packet, DF", lambda m, r: f"{r['mtu_inner']} B")
    row("overhead per packet", lambda m, r: "-" if r["overhead_bytes"] is None else f"{r['overhead_bytes']:g} B")
    ctxs = sorted({c for r in runs.values() for c in r["throughput_mbps"]})
    for c in ctxs:
        row(f"TCP {c}", lambda m, r, c=c: f"{r['throughput_mbps'].get(c, 0):.0f} Mbit/s")
    row("TCP all contexts", lambda m, r: f"{r['throughput_total_mbps']:.0f} Mbit/s")
    row("all contexts up after deploy", lambda m, r: f"{r['all_up_s']:.1f} s")
    row("recovery after uplink down/up", lambda m, r: f"{r['recovery_s']:.1f} s")
    row("rekeys per hour", lambda m, r: f"{r['rekeys_per_hour']:g}")
    row("rekey all: IKE messages", lambda m, r: str(r["rekey_all"]["messages"]))
    row("rekey all: IKE bytes", lambda m, r: str(r["rekey_all"]["bytes"]))
    row("rekey all: agent CPU", lambda m, r: f"{r['rekey_all']['agent_cpu_s'] * 1000:.0f} ms")
    row("rekey all IKE SAs: messages", lambda m, r: str((r.get("rekey_ike_all") or {}).get("messages", "-")))
    row("rekey all IKE SAs: bytes", lambda m, r: str((r.get("rekey_ike_all") or {}).get("bytes", "-")))
    row("rekey all IKE SAs: agent CPU",
        lambda m, r: f"{r['rekey_ike_all']['agent_cpu_s'] * 1000:.0f} ms" if r.get("rekey_ike_all") else "-")
    return table
@measure_app.command("balance")
def balance_cmd(
    topology: Annotated[Path, typer.Argument(help="Topology file with a cluster, e.g. topologies/loadbalancer.yml.")],
    clients: Annotated[int, typer.Option(help="Swarm clients added to the first cluster (1-1000).")] = 300,
    legacy: Annotated[int, typer.Option(help="How many of them announce no RFC 5685 support.")] = 0,
    failover: Annotated[bool, typer.Option(help="Kill the master, then bring it back.")] = True,
    json_out: Annotated[Path, typer.Option("--json", help="Write the full result here.")] = Path("balance.json"),
    png: Annotated[Path, typer.Option("--png", help="Plot of tunnels per member over time.")] = Path("balance.png"),
) -> None:
    """Connect a swarm of clients to a cluster's virtual address: spread, time to all up; then the
    master's failover (VIP move, clients back, spread after) and its rejoin."""
    from vpnlab.errors import VpnlabError
    from vpnlab.measure import balance as bal

    with reported():
        if not 1 <= clients <= 1000 or not 0 <= legacy <= clients:
            raise VpnlabError("--clients: 1..1000, --legacy: 0..clients")
        result = bal.balance(topology, clients=clients, legacy=legacy, failover=failover,
                             say=lambda s: err.print(s, markup=False))
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        bal.plot(result, png)
    table = Table(box=box.SIMPLE_HEAD, title=f"{clients} clients over {', '.join(result['members'])}")
    for col in ("phase", "per member (tunnels)", "max-min", "stddev", "time"):
        table.add_column(col, justify="left" if col in ("phase", "per member (tunnels)") else "right")
    c = result["connect"]
    table.add_row("connect", _per(c["spread"]), str(c["spread"]["max_minus_min"]), str(c["spread"]["stddev"]),
                  f"all up {c['all_up_s']:.2f} s")
    f = result.get("failover")
    if f:
        table.add_row(f"{f['killed']} killed", _per(f["spread_after"]), str(f["spread_after"]["max_minus_min"]),
                      str(f["spread_after"]["stddev"]),
                      f"VIP {f['vip_failover_s']:.2f} s, all back {f['all_back_s']:.2f} s")
        r = f["spread_after_rejoin"]
        table.add_row(f"{f['killed']} back", _per(r), str(r["max_minus_min"]), str(r["stddev"]), "")
        k = f.get("member_killed")
        if k:
            table.add_row(f"{k['killed']} killed (not master)", _per(k["spread_after"]),
                          str(k["spread_after"]["max_minus_min"]), str(k["spread_after"]["stddev"]),
                          f"all back {k['all_back_s']:.2f} s, others' SAs kept {k['others_sas_kept']}/{k['others_sas_before']}")
    out.print(table)
    out.print(f"wrote {json_out} and {png}")


def _per(s: dict) -> str:
    return " ".join(f"{m}={n}" for m, n in s["per_member"].items())
