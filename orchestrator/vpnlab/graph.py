"""Pictures of a lab: Graphviz dot (and png/svg through the `dot` binary) or mermaid.

The internet is a cloud at the top; each router sits in a dashed "site" box with its LANs and the
hosts in them; the IPsec tunnels of the classic star are dashed orange edges between hub and branch
(and between hubs). A NAT device is an octagon between the internet and the branches behind it.
"""

from __future__ import annotations

import shutil
import subprocess
from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

from vpnlab.errors import EnvironmentProblem, VpnlabError
from vpnlab.topology.model import Lab, Node

Format = Literal["dot", "mermaid", "png", "svg"]
FORMATS: tuple[Format, ...] = ("dot", "mermaid", "png", "svg")
_SUFFIXES: dict[str, Format] = {
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".png": "png",
    ".svg": "svg",
}
DOT_TIMEOUT_S = 60

FONT = "DejaVu Sans"
# fill, border per role; strongSwan routers get their own border so interop labs read at a glance
ROLE_COLORS = {
    "hub": ("#dbeafe", "#1d4ed8"),
    "gateway": ("#ede9fe", "#6d28d9"),
    "branch": ("#dcfce7", "#15803d"),
}
STRONGSWAN_BORDER = "#b91c1c"
TUNNEL_COLOR = "#ea580c"
CLOUD_FILL = "#e0f2fe"
NAT_FILL, NAT_BORDER = "#fef3c7", "#b45309"


def fmt_from_suffix(path: str | Path) -> Format:
    suffix = Path(path).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    what = f"unknown picture format {suffix!r}" if suffix else "no file suffix"
    raise VpnlabError(f"{path}: {what} (use .png, .svg, .dot or .mmd)")


def render(lab: Lab, fmt: Format | str) -> bytes:
    if fmt == "dot":
        return to_dot(lab).encode()
    if fmt == "mermaid":
        return to_mermaid(lab).encode()
    if fmt in ("png", "svg"):
        return _run_dot(to_dot(lab), fmt)
    raise VpnlabError(f"unknown graph format {fmt!r} (use one of: {', '.join(FORMATS)})")


def tunnels(lab: Lab) -> list[tuple[str, str]]:
    """(hub, branch) pairs of the classic star, then (hub, hub) pairs, in lab order."""
    star = [(hub, n.name) for n in lab.routers if n.role == "branch" for hub in n.hubs]
    hubs = [n.name for n in lab.routers if n.role == "hub"]
    return star + [(a, b) for i, a in enumerate(hubs) for b in hubs[i + 1 :]]


def _nat_caption(node: Node) -> list[str]:
    assert node.nat is not None
    shared = f", shared by {len(node.nat.branches)}" if len(node.nat.branches) > 1 else ""
    return [f"NAT {node.nat.type}{shared}", f"wan0 {node.public_address}", f"mappings idle out after {node.nat.mapping_timeout_s} s"]


def _uplink(node: Node) -> str:
    """What a router's wan0 attaches to: the internet, or its NAT device."""
    return node.nat_device or "inet"


def _lan_hosts(lab: Lab, router: Node, segment: str) -> list[Node]:
    return [h for h in lab.hosts if h.router == router.name and h.interfaces[0].segment == segment]


def _router_lans(router: Node) -> list[tuple[str, str, IPv4Network, str]]:
    """(interface, segment, subnet, router address) for each LAN of a router."""
    return [
        (i.name, i.segment, i.address.network, str(i.address.ip))
        for i in router.interfaces
        if i.name != "wan0"
    ]


def _router_caption(node: Node) -> list[str]:
    impl = "strongSwan" if node.implementation == "strongswan" else "vpnlab agent"
    lines = [f"{node.role} · {impl}"]
    if node.public_address is not None:
        lines.append(f"wan0 {node.public_address}")
    elif node.behind_nat:
        lines.append(f"behind NAT, wan0 {node.interfaces[0].address.ip}")
    extras = []
    if node.mesh.enabled:
        extras.append("mesh")
    if node.contexts:
        extras.append(f"{len(node.contexts)} contexts")
    if node.cluster:
        extras.append(f"cluster {node.cluster}")
    if extras:
        lines.append(", ".join(extras))
    return lines


# --- Graphviz -------------------------------------------------------------------------------------


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_dot(lab: Lab) -> str:
    out: list[str] = [
        f"graph {_q(lab.name)} {{",
        f'  graph [label=<<b>vpnlab · {_html(lab.name)}</b><br/><font point-size="10" color="{TUNNEL_COLOR}">'
        f'- - -  IPsec tunnel (hub to branch)</font>>, labelloc=t, fontsize=18, fontname="{FONT}",'
        ' rankdir=TB, nodesep=0.35, ranksep=0.7, newrank=true, bgcolor="white", pad=0.3];',
        f'  node [fontname="{FONT}", fontsize=11];',
        f'  edge [fontname="{FONT}", fontsize=9, color="#64748b"];',
        f'  inet [shape=ellipse, style=filled, fillcolor="{CLOUD_FILL}", color="#0284c7", penwidth=2,'
        f' peripheries=2, margin="0.3,0.1", label=<<font point-size="20">☁</font><br/><b>internet</b><br/>'
        f"{lab.underlay}>];",
    ]
    for dev in lab.nat_devices:
        caption = "<br/>".join(f'<font point-size="9">{_html(line)}</font>' for line in _nat_caption(dev))
        out.append(
            f'  {_q(dev.name)} [shape=octagon, style=filled, fillcolor="{NAT_FILL}", color="{NAT_BORDER}",'
            f" penwidth=2, label=<<b>{_html(dev.name)}</b><br/>{caption}>];"
        )
        out.append(f'  inet -- {_q(dev.name)} [penwidth=1.5, color="#0284c7"];')
    for router in lab.routers:
        fill, border = ROLE_COLORS.get(router.role, ("#f1f5f9", "#334155"))
        if router.implementation == "strongswan":
            border = STRONGSWAN_BORDER
        rid = _q(router.name)
        caption = "<br/>".join(f'<font point-size="9">{_html(line)}</font>' for line in _router_caption(router))
        out += [
            f"  subgraph {_q('cluster_' + router.name)} {{",
            '    style="rounded,dashed"; color="#94a3b8"; label=""; margin=10;',
            f"    {rid} [shape=box, style=\"rounded,filled\", fillcolor=\"{fill}\", color=\"{border}\", penwidth=2,"
            f" label=<<b>{_html(router.name)}</b><br/>{caption}>];",
        ]
        for ifname, segment, subnet, addr in _router_lans(router):
            lid = _q(segment)
            out.append(
                f'    {lid} [shape=box, style=filled, fillcolor="#f1f5f9", color="#94a3b8", height=0.3,'
                f' label=<<b>LAN</b> {subnet}>];'
            )
            out.append(f'    {rid} -- {lid} [label="{ifname} .{addr.split(".")[-1]}"];')
            for host in _lan_hosts(lab, router, segment):
                hid = _q(host.name)
                out.append(
                    f'    {hid} [shape=box, style="rounded", color="#475569", fontsize=10,'
                    f" label=<{_html(host.name)}<br/><font point-size=\"9\">{host.interfaces[0].address.ip}</font>>];"
                )
                out.append(f"    {lid} -- {hid};")
        out.append("  }")
        out.append(f'  {_q(_uplink(router))} -- {rid} [penwidth=1.5, color="#0284c7"];')
    for hub, branch in tunnels(lab):
        out.append(
            f'  {_q(hub)} -- {_q(branch)} [style=dashed, color="{TUNNEL_COLOR}", penwidth=1.6,'
            " constraint=false];"
        )
    out.append("}")
    return "\n".join(out) + "\n"


def _run_dot(source: str, fmt: str) -> bytes:
    exe = shutil.which("dot")
    if exe is None:
        raise EnvironmentProblem(
            f"drawing {fmt} needs the `dot` program: install graphviz (apt-get install graphviz), "
            "or write .dot/.mmd instead"
        )
    try:
        proc = subprocess.run(
            [exe, f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=DOT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise VpnlabError(f"graphviz dot took longer than {DOT_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        first = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[0]
        raise VpnlabError(f"graphviz dot failed: {first}")
    return proc.stdout


# --- mermaid --------------------------------------------------------------------------------------


def _mid(name: str) -> str:
    return "n_" + name.replace("-", "_")


def to_mermaid(lab: Lab) -> str:
    out = [
        "---",
        f"title: vpnlab · {lab.name}",
        "---",
        "flowchart TB",
        f'  inet(("☁ internet<br/>{lab.underlay}"))',
    ]
    inet_links: list[str] = []
    links: list[str] = []
    for dev in lab.nat_devices:
        out.append(f'  {_mid(dev.name)}{{{{"<b>{dev.name}</b><br/>{"<br/>".join(_nat_caption(dev))}"}}}}')
        out.append(f"  class {_mid(dev.name)} nat")
        inet_links.append(f"  inet --- {_mid(dev.name)}")
    for router in lab.routers:
        rid = _mid(router.name)
        out.append(f'  subgraph {_mid("site_" + router.name)}["site {router.name}"]')
        out.append(f'    {rid}["<b>{router.name}</b><br/>{"<br/>".join(_router_caption(router))}"]')
        klass = "strongswan" if router.implementation == "strongswan" else router.role
        out.append(f"    class {rid} {klass}")
        for ifname, segment, subnet, addr in _router_lans(router):
            lid = _mid("seg_" + segment)
            out.append(f'    {lid}[["LAN {subnet}"]]')
            out.append(f"    class {lid} lan")
            links.append(f'  {rid} ---|"{ifname} .{addr.split(".")[-1]}"| {lid}')
            for host in _lan_hosts(lab, router, segment):
                hid = _mid(host.name)
                out.append(f'    {hid}("{host.name}<br/>{host.interfaces[0].address.ip}")')
                links.append(f"  {lid} --- {hid}")
        out.append("  end")
        inet_links.append(f"  {'inet' if router.nat_device is None else _mid(router.nat_device)} --- {rid}")
    # internet links, then LAN links, then tunnels: linkStyle counts links in this order
    ordered = inet_links + links
    first_tunnel = len(ordered)
    ordered += [f'  {_mid(h)} -.-|"IPsec"| {_mid(b)}' for h, b in tunnels(lab)]
    out += ordered
    for role, (fill, border) in ROLE_COLORS.items():
        out.append(f"  classDef {role} fill:{fill},stroke:{border},stroke-width:2px")
    out.append(f"  classDef strongswan fill:#fee2e2,stroke:{STRONGSWAN_BORDER},stroke-width:2px")
    out.append("  classDef lan fill:#f1f5f9,stroke:#94a3b8")
    out.append(f"  classDef nat fill:{NAT_FILL},stroke:{NAT_BORDER},stroke-width:2px")
    out.append(f"  style inet fill:{CLOUD_FILL},stroke:#0284c7,stroke-width:2px")
    if len(ordered) > first_tunnel:
        idx = ",".join(str(i) for i in range(first_tunnel, len(ordered)))
        out.append(f"  linkStyle {idx} stroke:{TUNNEL_COLOR},stroke-width:2px")
    return "\n".join(out) + "\n"
