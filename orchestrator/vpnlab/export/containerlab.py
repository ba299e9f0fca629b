"""A resolved Lab -> containerlab topology files (one per host): pure data, no Docker, no root.

The exported lab is the lab `vpnlab deploy` builds (docs/containerlab.md):
- every node is a containerlab `linux` node made from the ContainerSpec its kind gives (the same
  image, command, capabilities, devices, sysctls, environment), each file of the spec (the agent's
  /etc/vpnlab/node.json) bound in read-only, the same labels, and the container name vpnlab uses
  (`prefix: vpnlab` gives vpnlab-<lab>-<node>), so `vpnlab inspect` and `vpnlab exec` find it;
- every segment is one Linux bridge inside a fabric container (`f_`), as the fabric netns of
  `vpnlab deploy` holds one bridge per segment: containerlab creates namespaced bridges itself
  (`<bridge>|f_` nodes, containerlab >= 0.69), so nothing is created on the host;
- every interface is a veth from the node to its segment's bridge, named as vpnlab names them;
- end hosts get their address and default route through `exec`, as lab.py configures them.
Nothing here knows about mesh, contexts or clusters: what a kind puts into its ContainerSpec goes along.

Several hosts: each host's file holds the nodes placed there and the bridges of the segments they
use. A segment with ends on several hosts is joined by VXLAN links in a star around the host with
most of its ends (a tree: bridges joined in a full mesh would loop frames), one VNI per pair of
hosts, and the whole segment gets the MTU that fits inside VXLAN.
"""

from __future__ import annotations

import json
import shlex
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from vpnlab.errors import ExportError
from vpnlab.export.placement import Host, Placement
from vpnlab.kinds.base import ContainerSpec
from vpnlab.net.wiring import plan_fabric
from vpnlab.runtime.base import node_labels
from vpnlab.topology.model import Lab, Node

CLAB_MIN_VERSION = "0.69.0"  # first release with bridges inside a container's namespace
PREFIX = "vpnlab"  # containerlab names containers <prefix>-<lab>-<node>: vpnlab's container_name()
# The fabric container: '_' is in no vpnlab node name, so it never clashes with one. Short, because
# clabernetes names a pod's end of a link "<node>-<interface>", a Linux name of at most 15 characters:
# "l123|f_-p999-1" still fits.
FABRIC_NODE = "f_"
FABRIC_COMMAND = "sleep infinity"
LABEL_FABRIC = "vpnlab.fabric"  # not vpnlab.lab: the fabric is no node of the lab
FILES_DIR = "files"  # bound files, beside the topology file
MARKER = ".vpnlab-export"  # lists what the last export wrote, so a new one replaces exactly that
LAB_MTU = 1500  # what `vpnlab deploy` gives every interface; containerlab's own default is 9500
VXLAN_PORT = 14789  # containerlab's default VXLAN port
VXLAN_OVERHEAD = {4: 50, 6: 70}  # outer IP + UDP 8 + VXLAN 8 + inner Ethernet 14
VNI_BLOCK = 1000  # VNIs one lab may use from its base
VNI_MAX = 16_777_215
READY_CHECK = "python3 -m vpnlab_agent ctl status | grep -q '\"ready\": true'"


@dataclass(frozen=True)
class VxlanLink:
    """One cross-host piece of a segment: the same VNI at both ends."""

    segment: str
    bridge: str
    vni: int
    hosts: tuple[str, str]  # (the star's centre, the other host)

    @property
    def interface(self) -> str:
        return f"vx{self.vni}"  # inside the fabric container on both hosts; at most 10 characters


@dataclass(frozen=True)
class ClabFile:
    host: Host | None  # None: the whole lab on one machine
    path: PurePosixPath  # relative to the export directory
    topology: dict[str, Any]
    comments: tuple[str, ...]
    files: dict[PurePosixPath, bytes] = field(default_factory=dict)  # bound files, relative to the export directory

    def text(self) -> str:
        head = "".join(f"# {line}".rstrip() + "\n" for line in self.comments)
        return head + yaml.safe_dump(self.topology, sort_keys=False, default_flow_style=False, width=120)


@dataclass(frozen=True)
class LabExport:
    lab: str
    image: str
    files: tuple[ClabFile, ...]
    vxlan: tuple[VxlanLink, ...] = ()
    empty_hosts: tuple[str, ...] = ()  # hosts the placement left without nodes: no file for them
    segment_mtu: dict[str, int] = field(default_factory=dict)


def default_vni_base(lab: str) -> int:
    """A block of VNI_BLOCK VNIs picked by the lab's name, so two labs on the same hosts rarely meet."""
    return VNI_BLOCK * (1 + zlib.crc32(lab.encode()) % ((VNI_MAX // VNI_BLOCK) - 1))


def export_lab(
    lab: Lab,
    image: str,
    placement: Placement | None = None,
    *,
    vni_base: int | None = None,
    specs: dict[str, ContainerSpec] | None = None,
) -> LabExport:
    """Build every file in memory (nothing is written): one for the lab, or one per placed host."""
    from vpnlab.kinds.registry import kind_for

    specs = specs or {n.name: kind_for(n).container_spec(lab, n) for n in lab.nodes}
    if placement is None:
        node_host = {n.name: "" for n in lab.nodes}
        hosts: tuple[Host | None, ...] = (None,)
        vxlan: tuple[VxlanLink, ...] = ()
        mtu = {s.name: LAB_MTU for s in lab.segments}
    else:
        node_host = placement.node_host
        hosts = tuple(h for h in placement.hosts if placement.nodes_on(h.name))
        vxlan = _vxlan_links(lab, placement, default_vni_base(lab.name) if vni_base is None else vni_base)
        spanning = {v.segment for v in vxlan}
        inner = min(LAB_MTU, placement.host_mtu - VXLAN_OVERHEAD[placement.hosts[0].address.version])
        mtu = {s.name: inner if s.name in spanning else LAB_MTU for s in lab.segments}
    files = tuple(_host_file(lab, image, specs, h, node_host, vxlan, mtu, placement) for h in hosts)
    empty = () if placement is None else tuple(h.name for h in placement.hosts if not placement.nodes_on(h.name))
    return LabExport(lab.name, image, files, vxlan, empty, mtu)


def _vxlan_links(lab: Lab, placement: Placement, base: int) -> tuple[VxlanLink, ...]:
    if not 1 <= base <= VNI_MAX:
        raise ExportError(f"VNI base {base} is outside 1-{VNI_MAX}")
    bridges = {p.segment: p.name for p in plan_fabric(lab).bridges}
    order = [h.name for h in placement.hosts]
    links: list[VxlanLink] = []
    for seg in lab.segments:
        ends: dict[str, int] = {}
        for node in lab.nodes:
            for iface in node.interfaces:
                if iface.segment == seg.name:
                    host = placement.node_host[node.name]
                    ends[host] = ends.get(host, 0) + 1
        if len(ends) < 2:
            continue
        on = sorted(ends, key=order.index)
        centre = max(on, key=lambda h: (ends[h], -order.index(h)))
        for other in on:
            if other != centre:
                links.append(VxlanLink(seg.name, bridges[seg.name], base + len(links), (centre, other)))
    if links and (len(links) > VNI_BLOCK or links[-1].vni > VNI_MAX):
        raise ExportError(
            f"lab {lab.name} needs {len(links)} VXLAN links from VNI {base}: more than {VNI_BLOCK} "
            f"or past {VNI_MAX}; place LANs with their routers or give another VNI base"
        )
    return tuple(links)


def _host_file(
    lab: Lab,
    image: str,
    specs: dict[str, ContainerSpec],
    host: Host | None,
    node_host: dict[str, str],
    vxlan: tuple[VxlanLink, ...],
    mtu: dict[str, int],
    placement: Placement | None,
) -> ClabFile:
    here = "" if host is None else host.name
    plan = plan_fabric(lab)
    local = [n for n in lab.nodes if node_host[n.name] == here]
    ports = [p for p in plan.ports if node_host[p.node] == here]
    my_vxlan = [v for v in vxlan if here in v.hosts]
    used = {p.bridge for p in ports} | {v.bridge for v in my_vxlan}
    bridges = [b for b in plan.bridges if b.name in used]
    segment_of = {b.name: b.segment for b in plan.bridges}
    base = PurePosixPath(here) if here else PurePosixPath()

    nodes: dict[str, Any] = {
        FABRIC_NODE: {
            "kind": "linux",
            "image": image,
            "cmd": FABRIC_COMMAND,
            "network-mode": "none",
            "restart-policy": "no",
            "cap-add": ["NET_ADMIN", "NET_RAW"],  # for tcpdump and `bridge` inside it
            "labels": {LABEL_FABRIC: lab.name},
        }
    }
    for b in bridges:
        nodes[_bridge_node(b.name)] = {"kind": "bridge", "network-mode": f"container:{FABRIC_NODE}"}
    files: dict[PurePosixPath, bytes] = {}
    for node in local:
        spec = specs[node.name]
        binds = []
        for path, content in sorted(spec.files.items()):
            rel = PurePosixPath(FILES_DIR, node.name, path.lstrip("/"))
            files[base / rel] = content
            binds.append(f"{rel}:{path}:ro")
        nodes[node.name] = _linux_node(lab, node, spec, image, binds)

    links: list[dict[str, Any]] = []
    for p in ports:
        # the brief form: the only one clabernetes reads
        links.append({"endpoints": [f"{p.node}:{p.ifname}", f"{_bridge_node(p.bridge)}:{p.port}"], "mtu": mtu[segment_of[p.bridge]]})
    assert placement is not None or not my_vxlan
    for v in my_vxlan:
        peer = placement.host(v.hosts[1] if v.hosts[0] == here else v.hosts[0])  # type: ignore[union-attr]
        links.append({
            "type": "vxlan",
            "endpoint": {"node": _bridge_node(v.bridge), "interface": v.interface},
            "remote": str(peer.address),
            "vni": v.vni,
            "dst-port": VXLAN_PORT,
            "mtu": mtu[v.segment],
        })
    topology: dict[str, Any] = {"name": lab.name, "prefix": PREFIX, "topology": {"nodes": nodes}}
    if links:
        topology["topology"]["links"] = links
    extra = sorted({t for n in local if (t := specs[n.name].image)})
    comments = _comments(lab, image, host, local, bridges, my_vxlan, mtu, placement, extra)
    name = PurePosixPath(f"{lab.name}.clab.yml")
    return ClabFile(host, base / name, topology, comments, files)


def _linux_node(lab: Lab, node: Node, spec: ContainerSpec, image: str, binds: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "linux",
        "image": spec.image or image,  # a kind's own image (libreswan's) or the node image
        "cmd": shlex.join(spec.command),
        "network-mode": "none",  # no management interface: like `vpnlab deploy`, every interface is the lab's
        "restart-policy": "no",  # a restarted container would come back without its veths
        "labels": node_labels(lab, node),
    }
    if spec.cap_add:
        out["cap-add"] = list(spec.cap_add)
    if spec.devices:
        out["devices"] = list(spec.devices)
    if spec.sysctls:
        out["sysctls"] = dict(spec.sysctls)
    if spec.env:
        out["env"] = dict(spec.env)
    if binds:
        out["binds"] = binds
    if not node.is_router:
        out["exec"] = _host_commands(node)
    if spec.has_agent:  # `docker ps` shows healthy once the agent says ready, as deploy waits for
        out["healthcheck"] = {"test": ["CMD-SHELL", READY_CHECK], "start-period": 5, "interval": 10, "timeout": 5, "retries": 3}
    return out


def _host_commands(node: Node) -> list[str]:
    """What lab.py does for an end host from outside (net/fabric.configure_interface)."""
    commands = []
    for iface in node.interfaces:
        commands += [f"ip link set dev {iface.name} up", f"ip address add {iface.address} dev {iface.name}"]
    if node.gateway is not None:
        commands.append(f"ip route add default via {node.gateway}")
    return commands


def _bridge_node(bridge: str) -> str:
    return f"{bridge}|{FABRIC_NODE}"


def _comments(
    lab: Lab,
    image: str,
    host: Host | None,
    local: list[Node],
    bridges: list[Any],
    vxlan: list[VxlanLink],
    mtu: dict[str, int],
    placement: Placement | None,
    extra_images: list[str] = [],  # noqa: B006 - read only
) -> tuple[str, ...]:
    lines = [f"containerlab topology of vpnlab lab {lab.name}, exported by `vpnlab export` from {lab.source}"]
    if host is not None and placement is not None:
        others = ", ".join(f"{h.name} ({h.address})" for h in placement.hosts if h.name != host.name)
        lines.append(f"Host {host.name} ({host.address}) runs {len(local)} of the lab's {len(lab.nodes)} nodes; other hosts: {others}.")
    lines += [
        f"Run: containerlab deploy -t {lab.name}.clab.yml   (containerlab >= {CLAB_MIN_VERSION}, as root)",
        f"Image {image} must exist on this host: `vpnlab image` builds it; elsewhere",
        f"  docker save {image} | ssh HOST docker load",
        *(f"Image {t} too (`vpnlab deploy` of this lab builds it; vpnlab.image_libreswan)" for t in extra_images),
        f"Files under {FILES_DIR}/ are bound into the nodes; the node.json files hold the lab's PSK.",
        f"Segments are bridges inside the {FABRIC_NODE} container ({', '.join(b.name for b in bridges)});",
        f"  watch the internet with: docker exec {PREFIX}-{lab.name}-{FABRIC_NODE} tcpdump -ni inet",
    ]
    if not vxlan:
        return tuple(lines)
    assert host is not None and placement is not None
    lines.append(f"Segments shared with other hosts, over VXLAN (UDP {VXLAN_PORT}, one VNI per pair of hosts):")
    for v in vxlan:
        peer = v.hosts[1] if v.hosts[0] == host.name else v.hosts[0]
        lines.append(f"  {v.segment} (bridge {v.bridge}): VNI {v.vni} to host {peer} ({placement.host(peer).address})")
    seg_mtu = min(mtu[v.segment] for v in vxlan)
    overhead = VXLAN_OVERHEAD[host.address.version]
    lines += [
        f"MTU: {seg_mtu} on every port of these segments, on every host: the hosts' network carries {placement.host_mtu},",
        f"  VXLAN over IPv{host.address.version} takes {overhead} (outer IP, UDP, VXLAN, inner Ethernet header).",
    ]
    lines += _ipsec_mtu_note(seg_mtu)
    return tuple(lines)


def _ipsec_mtu_note(underlay_mtu: int) -> list[str]:
    """What the lower underlay MTU means for the tunnels (figures from the agent's own code)."""
    from vpnlab_agent.dataplane.userspace import OUTER_HEADERS, UNDERLAY_MTU
    from vpnlab_agent.esp.codec import max_inner_len
    from vpnlab_agent.sa import EspAlgorithm

    gcm = EspAlgorithm("aes-gcm-16", 128)
    fits = max_inner_len(underlay_mtu - OUTER_HEADERS, gcm)
    sized = max_inner_len(UNDERLAY_MTU - OUTER_HEADERS, gcm)
    if fits >= sized:
        return [f"IPsec: ESP-in-UDP (AES-GCM-16) packets of the agent's ipsec0 MTU ({sized}) fit in {underlay_mtu} bytes."]
    return [
        f"IPsec: an ESP-in-UDP packet (AES-GCM-16) fits in {underlay_mtu} bytes when its inner packet has at most",
        f"  {fits} bytes. The agent's userspace engine sizes ipsec0 to its wan0's MTU: {fits} here, not {sized};",
        "  peers that do not (strongSwan's kernel-libipsec keeps its own MTU) send larger ESP packets as IP fragments.",
        f"  Give the hosts' network an MTU of {UNDERLAY_MTU + VXLAN_OVERHEAD[4]} or more (placement file `mtu:`) to keep {UNDERLAY_MTU} in the lab.",
    ]


# ---------------------------------------------------------------- writing


def write_export(export: LabExport, outdir: Path) -> list[Path]:
    """Write every file under `outdir`; a directory with other content than a previous export is refused.
    Returns the topology files written."""
    previous = _previous_export(outdir)
    contents: dict[PurePosixPath, tuple[bytes, int]] = {}
    for f in export.files:
        contents[f.path] = (f.text().encode(), 0o644)
        for rel, data in f.files.items():
            contents[rel] = (data, 0o600)  # node configs carry the lab's PSK
    try:
        for rel in previous:
            target = outdir / rel
            if target.is_file() or target.is_symlink():
                target.unlink()
        _prune_empty_dirs(outdir)
        outdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for rel, (data, mode) in sorted(contents.items()):
            target = outdir / rel
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
        (outdir / MARKER).write_text(json.dumps(sorted(str(r) for r in contents), indent=1) + "\n")
    except OSError as exc:
        raise ExportError(f"cannot write the export to {outdir}: {exc.strerror or exc}") from None
    return [outdir / f.path for f in export.files]


def _previous_export(outdir: Path) -> list[PurePosixPath]:
    if not outdir.exists():
        return []
    if not outdir.is_dir():
        raise ExportError(f"{outdir} exists and is not a directory")
    marker = outdir / MARKER
    if not marker.is_file():
        if any(outdir.iterdir()):
            raise ExportError(f"{outdir} is not empty and holds no earlier vpnlab export: give an empty or new directory")
        return []
    try:
        listed = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{marker}: unreadable ({exc}); remove it or give another directory") from None
    paths = [PurePosixPath(p) for p in listed if isinstance(p, str)]
    if any(p.is_absolute() or ".." in p.parts for p in paths):
        raise ExportError(f"{marker}: lists paths outside {outdir}; remove it or give another directory")
    return paths


def _prune_empty_dirs(outdir: Path) -> None:
    if not outdir.is_dir():
        return
    for d in sorted((p for p in outdir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def remove_export(outdir: Path) -> None:
    """Remove a directory written by write_export (used by the containerlab runtime's destroy)."""
    if (outdir / MARKER).is_file():
        shutil.rmtree(outdir, ignore_errors=True)
