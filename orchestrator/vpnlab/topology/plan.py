"""Address planning: validated TopologySpec -> frozen Lab with every address decided.

Deterministic: the same file always gives the same Lab. Rules (docs/topology.md):
- routers' public addresses from .10 of the underlay upward, in file order, skipping explicit ones;
- LANs not given: the lowest 10.N.0.0/24 overlapping nothing given or planned, in file order;
- a router takes the first usable address of each LAN; hosts from .10 upward in the first LAN,
  explicit host addresses honoured.
Cross-node rules (unknown hubs, overlaps, collisions) are checked here, each as one TopologyError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from vpnlab.errors import TopologyError
from vpnlab.topology import clusters as cl
from vpnlab.topology import contexts as ctx
from vpnlab.topology import crypto
from vpnlab.topology import natplan
from vpnlab.topology.model import (
    HUB_ROLES,
    UNDERLAY,
    Interface,
    Lab,
    LibreswanSettings,
    MeshSettings,
    NatSettings,
    Node,
    Segment,
)
from vpnlab.topology.schema import (
    NODE_NAME_RE,
    LibreswanSpec,
    MeshSpec,
    NodeSpec,
    PskSecret,
    TopologySpec,
    parse_cidr,
)

FIRST_PLANNED_OFFSET = 10  # planned public and host addresses start at .10


def lan_segment_name(router: str, index: int) -> str:
    return f"lan-{router}" if index == 0 else f"lan-{router}-{index}"


@dataclass
class _Router:
    name: str
    spec: NodeSpec
    lans: list[IPv4Network] = field(default_factory=list)
    wan: IPv4Address | None = None
    hubs: tuple[str, ...] = ()


@dataclass
class _Host:
    name: str
    router: str
    where: str  # the field that introduced it, for errors
    explicit: IPv4Address | None = None
    address: IPv4Interface | None = None
    lan_index: int = 0
    generated: bool = False  # from a router's `hosts:` (True) or a host node (False)


class _Planner:
    def __init__(self, spec: TopologySpec, source: Path, file: str) -> None:
        self.spec, self.source, self.file = spec, source, file
        self.underlay = parse_cidr(spec.internet)
        self.lans_taken: list[tuple[IPv4Network, str]] = []
        # Implicit NAT devices (`nat: true`) become nodes of their own, in file order (natplan.py).
        self.nodes = natplan.expand_nodes(dict(spec.nodes), self.fail)
        self.routers: dict[str, _Router] = {
            n: _Router(n, s) for n, s in self.nodes.items() if s.role != "host"
        }
        self.nat: natplan.NatPlan | None = None

    def fail(self, where: str, problem: str) -> TopologyError:
        return TopologyError(self.file, where, problem)

    # --- secrets and crypto (topology/crypto.py) -----------------------------------------------

    def psk(self, secret: PskSecret | None, where: str) -> str | None:
        return None if secret is None else crypto.read_psk(secret, where, self.source.parent, self.fail)

    def check_tunnels(self, nodes: list[Node], lab_psk: str | None, pairs: tuple[tuple[frozenset[str], str], ...]) -> None:
        by_name = {n.name: n for n in nodes}
        probe = Lab(self.spec.name, self.source, self.underlay, (), tuple(nodes), psk=lab_psk, pair_psks=pairs)
        tunnels = [(h, b.name) for b in nodes if b.role == "branch" for h in b.hubs if h in by_name]  # not clusters
        hubs = [n.name for n in nodes if n.role == "hub"]
        tunnels += [(a, b) for i, a in enumerate(hubs) for b in hubs[i + 1:]]  # hub to hub (nodeconfig.py)
        for hub, branch in tunnels:
            def where(key: str, branch: str = branch) -> str:
                own = self.spec.nodes[branch].crypto
                return f"nodes.{branch}.crypto.{key}" if own and key in own.model_fields_set else f"nodes.{branch}"
            crypto.check_tunnel(hub, by_name[hub].crypto, branch, by_name[branch].crypto, where, self.fail)
        crypto.check_psks(tunnels, probe.psk_between, lambda n: by_name[n].crypto.auth, self.fail)
        if lab_psk is None:
            for b in nodes:
                if b.mesh.enabled and b.crypto.auth == "psk":
                    raise self.fail("secret", f"missing: mesh shortcuts of {b.name} authenticate with the "
                                              "lab-wide PSK (give secret: {psk: ...}, or auth: cert)")

    # --- hubs -------------------------------------------------------------------------------------

    def attach_branches(self) -> None:
        hubs = cl.hub_candidates(self.spec)  # clusters count as hubs; their members do not
        listed = ", ".join(hubs) or "none"
        for r in self.routers.values():
            if r.spec.role != "branch":
                continue
            where = f"nodes.{r.name}.hubs"
            if r.spec.hubs is None:
                if len(hubs) == 1:
                    r.hubs = (hubs[0],)
                    continue
                if not hubs:
                    raise self.fail(f"nodes.{r.name}", "a branch needs a hub, and this lab has none")
                raise self.fail(where, f"required when a lab has several hubs (hubs in this lab: {listed})")
            for h in r.spec.hubs:
                if h in self.spec.clusters:
                    continue
                if h not in self.spec.nodes:
                    raise self.fail(where, f"unknown hub {h!r} (hubs in this lab: {listed})")
                role = self.spec.nodes[h].role
                if role not in HUB_ROLES:
                    raise self.fail(where, f"{h!r} is a {role}, not a hub (hubs in this lab: {listed})")
                cluster = cl.member_of(self.spec, h)
                if cluster is not None:
                    raise self.fail(where, f"{h!r} is a member of cluster {cluster!r}: name the cluster instead")
            r.hubs = tuple(r.spec.hubs)

    # --- LANs -------------------------------------------------------------------------------------

    def plan_lans(self) -> None:
        taken: list[tuple[IPv4Network, str]] = []  # (subnet, owner) of every LAN so far
        for r in self.routers.values():
            for cidr in r.spec.lan or ():
                net = parse_cidr(cidr)
                where = f"nodes.{r.name}.lan"
                problem = ctx.not_a_lan(net)
                if problem:
                    raise self.fail(where, problem)
                if net.prefixlen > 30:
                    raise self.fail(where, f"LAN {net} is too small (use a /30 or larger)")
                if net.overlaps(self.underlay):
                    raise self.fail(where, f"LAN {net} overlaps the underlay (internet: {self.underlay})")
                for other, owner in taken:
                    if net.overlaps(other):
                        whose = "another LAN of the same node" if owner == r.name else f"{owner}'s LAN"
                        raise self.fail(
                            where, f"LAN {net} of {r.name} overlaps {whose} {other}"
                        )
                taken.append((net, r.name))
                r.lans.append(net)
        # planned LANs also keep clear of explicit context LANs (overlap would be allowed, but confuses)
        avoid = [parse_cidr(cidr) for s in self.spec.nodes.values() for c in s.contexts or () for cidr in c.lan or ()]
        for cname, c in self.spec.clusters.items():  # explicit segments stay clear of planned LANs
            if c.segment is not None:
                taken.append((parse_cidr(c.segment), f"cluster {cname}'s segment"))
        first_free = 0  # taken only grows: a 10.N/24 refused for one router stays refused (O(n) at 200 branches)
        for r in self.routers.values():
            if r.lans or r.spec.contexts or r.spec.role == "nat":
                continue  # a router with contexts has plain LANs only when it lists them
            for n in range(first_free, 256):
                net = IPv4Network(f"10.{n}.0.0/24")
                if not net.overlaps(self.underlay) and not any(net.overlaps(t) for t, _ in taken) and not any(
                    net.overlaps(a) for a in avoid
                ):
                    break
            else:
                raise self.fail(f"nodes.{r.name}.lan", "no free 10.N.0.0/24 left to plan; give 'lan'")
            first_free = n + 1
            taken.append((net, r.name))
            r.lans.append(net)
        self.lans_taken = [(n, o) for n, o in taken if not o.startswith("cluster ")]
        self.nat = natplan.plan_nat(self.nodes, [self.underlay, *(t for t, _ in taken)], self.fail)

    # --- public addresses -------------------------------------------------------------------------

    def _check_public(self, where: str, addr: IPv4Address, used: dict[IPv4Address, str]) -> None:
        if addr not in self.underlay:
            raise self.fail(where, f"{addr} is outside the underlay (internet: {self.underlay})")
        if addr in (self.underlay.network_address, self.underlay.broadcast_address):
            raise self.fail(where, f"{addr} is the underlay's network or broadcast address")
        if addr in used:
            raise self.fail(where, f"{addr} is already used by {used[addr]}")

    def plan_public(self) -> dict[str, IPv4Address]:
        used: dict[IPv4Address, str] = {}
        for r in self.routers.values():
            if r.spec.public is not None:
                addr = IPv4Address(r.spec.public)
                self._check_public(f"nodes.{r.name}.public", addr, used)
                used[addr] = r.name
                r.wan = addr
        upstream_addr: dict[str, IPv4Address] = {}
        for where, up, explicit in cl.upstream_publics(self.spec):
            if explicit is not None:
                self._check_public(where, explicit, used)
                used[explicit] = up
                upstream_addr[up] = explicit
        candidate = int(self.underlay.network_address) + FIRST_PLANNED_OFFSET
        last = int(self.underlay.broadcast_address) - 1

        def next_free(who: str) -> IPv4Address:
            nonlocal candidate
            while candidate <= last and IPv4Address(candidate) in used:
                candidate += 1
            if candidate > last:
                count = len(self.routers) + len(self.spec.clusters)
                raise self.fail(
                    "internet",
                    f"underlay {self.underlay} is too small for {count} routers and upstream routers "
                    f"(planned addresses start at .{FIRST_PLANNED_OFFSET})",
                )
            addr = IPv4Address(candidate)
            used[addr] = who
            return addr

        for r in self.routers.values():
            if r.wan is None and not cl.member_of(self.spec, r.name) and r.spec.nat is False:
                # cluster members sit behind the upstream; NATed branches' wan0 is inside (natplan.py)
                r.wan = next_free(r.name)
        for _, up, _ in cl.upstream_publics(self.spec):
            if up not in upstream_addr:
                upstream_addr[up] = next_free(up)
        return upstream_addr

    # --- hosts ------------------------------------------------------------------------------------

    def collect_hosts(self) -> list[_Host]:
        """Hosts in Lab order: each router's `hosts:` right after it, host nodes where they appear."""
        hosts: list[_Host] = []
        names = set(self.nodes)
        routers = ", ".join(n for n, r in self.routers.items() if r.spec.role != "nat") or "none"
        for name, s in self.nodes.items():
            if s.role == "host":
                where = f"nodes.{name}.router"
                assert s.router is not None
                if s.router not in self.nodes:
                    raise self.fail(where, f"unknown router {s.router!r} (routers in this lab: {routers})")
                if s.router not in self.routers or self.routers[s.router].spec.role == "nat":
                    what = "a NAT device" if s.router in self.routers else "a host"
                    raise self.fail(where, f"{s.router!r} is {what}, not a router (routers in this lab: {routers})")
                explicit = IPv4Address(s.address) if s.address is not None else None
                hosts.append(_Host(name, s.router, f"nodes.{name}.address", explicit))
                continue
            if s.hosts is None or s.hosts == 0:
                continue
            where = f"nodes.{name}.hosts"
            if isinstance(s.hosts, int):
                generated = [f"{name}-h{i}" for i in range(1, s.hosts + 1)]
                for g in generated:
                    if not NODE_NAME_RE.match(g):
                        raise self.fail(
                            where, f"host name {g!r} would be longer than 15 characters; list the host names instead"
                        )
            else:
                generated = list(s.hosts)
            for g in generated:
                if g in names:
                    raise self.fail(where, f"host name {g!r} is already used by another node")
                names.add(g)
                hosts.append(_Host(g, name, where, generated=True))
        return hosts

    def plan_hosts(self, hosts: list[_Host]) -> None:
        used: dict[IPv4Address, str] = {}
        for r in self.routers.values():
            for lan in r.lans:
                used[router_address(lan)] = r.name
        for h in hosts:
            if h.explicit is None:
                continue
            r = self.routers[h.router]
            lan_list = ", ".join(map(str, r.lans))
            for i, lan in enumerate(r.lans):
                if h.explicit in lan:
                    break
            else:
                raise self.fail(h.where, f"{h.explicit} is not in any LAN of {r.name} ({lan_list})")
            if h.explicit in (lan.network_address, lan.broadcast_address):
                raise self.fail(h.where, f"{h.explicit} is the network or broadcast address of {lan}")
            if h.explicit in used:
                raise self.fail(h.where, f"{h.explicit} is already used by {used[h.explicit]}")
            used[h.explicit] = h.name
            h.address, h.lan_index = IPv4Interface(f"{h.explicit}/{lan.prefixlen}"), i
        for r in self.routers.values():
            mine = [h for h in hosts if h.router == r.name and h.explicit is None]
            if not r.lans:
                if mine:  # a router with only contexts: its hosts belong in a context
                    raise self.fail(f"nodes.{r.name}.hosts", f"{r.name} has no plain LAN for hosts; give 'lan' or put the hosts in a context")
                continue
            lan = r.lans[0]
            candidate = int(lan.network_address) + FIRST_PLANNED_OFFSET
            for h in mine:
                while candidate < int(lan.broadcast_address) and IPv4Address(candidate) in used:
                    candidate += 1
                if candidate >= int(lan.broadcast_address):
                    raise self.fail(
                        f"nodes.{r.name}.lan",
                        f"LAN {lan} is too small for {len(mine)} planned hosts "
                        f"(planned host addresses start at .{FIRST_PLANNED_OFFSET})",
                    )
                addr = IPv4Address(candidate)
                used[addr] = h.name
                h.address = IPv4Interface(f"{addr}/{lan.prefixlen}")

    # --- clusters (reserved) ----------------------------------------------------------------------

    def cluster_of(self) -> dict[str, str]:
        member_of: dict[str, str] = {}
        gateways = ", ".join(n for n, r in self.routers.items() if r.spec.role == "gateway") or "none"
        for cname, c in self.spec.clusters.items():
            where = f"clusters.{cname}.members"
            for m in c.members:
                if m not in self.nodes:
                    raise self.fail(where, f"unknown gateway {m!r} (gateways in this lab: {gateways})")
                if self.nodes[m].role != "gateway":
                    raise self.fail(where, f"{m!r} is a {self.nodes[m].role}, not a gateway")
                if m in member_of:
                    raise self.fail(where, f"{m!r} is already a member of cluster {member_of[m]!r}")
                member_of[m] = cname
        return member_of

    # --- assembly ---------------------------------------------------------------------------------

    def libreswan_settings(self, name: str, s: NodeSpec) -> LibreswanSettings | None:
        """A libreswan node's options; redirect_to must name another libreswan hub of the lab."""
        if s.implementation != "libreswan":
            return None
        ls = s.libreswan or LibreswanSpec()
        target = ls.redirect_to
        if target is not None:
            other = self.spec.nodes.get(target)
            if target == name or other is None or other.role != "hub" or other.implementation != "libreswan":
                hubs = sorted(n for n, o in self.spec.nodes.items()
                              if n != name and o.role == "hub" and o.implementation == "libreswan")
                raise self.fail(f"nodes.{name}.libreswan.redirect_to",
                                f"{target!r} is not another libreswan hub of this lab "
                                f"(libreswan hubs: {', '.join(hubs) or 'none'})")
        return LibreswanSettings(accept_redirect=ls.accept_redirect, redirect_to=target, redirect=ls.redirect)

    def build(self) -> Lab:
        lab_psk = self.psk(self.spec.secret, "secret")
        pairs = crypto.pair_psks(self.spec, self.source.parent, self.fail)
        if self.spec.clusters and lab_psk is None:
            raise self.fail("secret", "missing: clusters key their status messages from the lab-wide PSK "
                                      "(give secret: {psk: ...})")
        cl.check_names(self.spec, self.fail)
        member_of = self.cluster_of()
        self.attach_branches()
        self.plan_lans()
        segments_of = cl.plan_segments(self.spec, self.underlay, self.lans_taken, self.fail)
        upstream_addr = self.plan_public()
        clusters = tuple(cl.plan_cluster(cname, c, segments_of[cname], lab_psk or "", self.fail)
                         for cname, c in self.spec.clusters.items())
        by_name = {c.name: c for c in clusters}
        hosts = self.collect_hosts()
        self.plan_hosts(hosts)
        defaults = self.spec.defaults
        taken_names = set(self.nodes) | {h.name for h in hosts}
        cplan = ctx.plan_contexts(
            self.spec, self.file, self.underlay, {n: r.hubs for n, r in self.routers.items()},
            [lan for r in self.routers.values() for lan in r.lans], taken_names,
        )

        nodes: list[Node] = []
        segments = [Segment(UNDERLAY, "underlay", self.underlay)]
        assert self.nat is not None
        for r in self.routers.values():
            for i, lan in enumerate(r.lans):
                segments.append(Segment(lan_segment_name(r.name, i), "lan", lan))
            if r.spec.role == "nat":
                segments.append(Segment(natplan.segment_name(r.name), "nat", self.nat.inside[r.name]))
        segments.extend(cplan.segments)
        for name, s in self.nodes.items():
            if s.role == "host":
                nodes.append(self._host_node(next(h for h in hosts if h.name == name)))
                continue
            r = self.routers[name]
            if s.role == "nat":
                nodes.append(self._nat_node(r))
                continue
            cluster = by_name.get(member_of.get(name, ""))
            device = self.nat.device_of.get(name)
            ifaces = []
            if device is not None:
                ifaces.append(Interface("wan0", natplan.segment_name(device), self.nat.branch_address(name)))
            elif cluster is None:
                assert r.wan is not None
                ifaces.append(Interface("wan0", UNDERLAY, IPv4Interface(f"{r.wan}/{self.underlay.prefixlen}")))
            for i, lan in enumerate(r.lans):
                address = IPv4Interface(f"{router_address(lan)}/{lan.prefixlen}")
                ifaces.append(Interface(f"lan{i}", lan_segment_name(name, i), address))
            ifaces.extend(cplan.interfaces.get(name, ()))
            if cluster is not None:  # after the LANs: lan0 stays the first LAN (route source, hosts)
                ifaces.append(cl.member_interface(cluster, name))
                r.wan = cluster.member_addresses[name]
            nodes.append(
                Node(
                    name=name,
                    role=s.role,
                    implementation=s.implementation,
                    interfaces=tuple(ifaces),
                    public_address=None if device else r.wan,
                    lan_subnets=tuple(r.lans),
                    hubs=r.hubs,
                    follow_redirects=bool(s.follow_redirects),
                    libreswan=self.libreswan_settings(name, s),
                    psk=self.psk(s.secret, f"nodes.{name}.secret"),
                    crypto=crypto.crypto_settings(name, self.spec, s, self.fail),
                    dataplane=s.dataplane or defaults.dataplane,
                    behind_nat=device is not None,
                    nat_device=device,
                    gateway=None if device is None else self.nat.device_address(device).ip,
                    mesh=_mesh(defaults.mesh, s.mesh),
                    contexts=cplan.by_router.get(name, ()),
                    cluster=member_of.get(name),
                )
            )
            # hosts declared with `hosts:` follow their router
            nodes.extend(self._host_node(h) for h in hosts if h.router == name and h.generated)
            nodes.extend(cplan.host_node(h) for h in cplan.hosts if h.router == name)
        for c in clusters:
            assert c.segment is not None
            segments.append(Segment(c.segment_name, "cluster", c.segment))
            nodes.append(cl.upstream_node(c, upstream_addr[c.upstream], self.underlay, UNDERLAY))
            if c.swarm:
                nodes.append(cl.swarm_node(c, upstream_addr[c.swarm], self.underlay, UNDERLAY))
        self.check_tunnels([n for n in nodes if n.is_router], lab_psk, pairs)
        return Lab(
            name=self.spec.name,
            source=self.source,
            underlay=self.underlay,
            segments=tuple(segments),
            nodes=tuple(nodes),
            clusters=clusters,
            context_method=self.spec.context_method,
            inner_block=cplan.inner_block,
            psk=lab_psk,
            pair_psks=pairs,
        )

    def _nat_node(self, r: _Router) -> Node:
        assert r.wan is not None and self.nat is not None
        return Node(
            name=r.name,
            role="nat",
            implementation="nat",
            interfaces=(
                Interface("wan0", UNDERLAY, IPv4Interface(f"{r.wan}/{self.underlay.prefixlen}")),
                Interface("lan0", natplan.segment_name(r.name), self.nat.device_address(r.name)),
            ),
            public_address=r.wan,
            nat=NatSettings(
                type=r.spec.type or natplan.DEFAULT_NAT_TYPE,  # type: ignore[arg-type]
                mapping_timeout_s=r.spec.mapping_timeout or natplan.DEFAULT_MAPPING_TIMEOUT_S,
                inside=self.nat.inside[r.name],
                branches=self.nat.branches_of(r.name),
            ),
        )

    def _host_node(self, h: _Host) -> Node:
        r = self.routers[h.router]
        assert h.address is not None
        lan = r.lans[h.lan_index]
        return Node(
            name=h.name,
            role="host",
            implementation="host",
            interfaces=(Interface("eth0", lan_segment_name(r.name, h.lan_index), h.address),),
            router=r.name,
            gateway=router_address(lan),
        )


def router_address(lan: IPv4Network) -> IPv4Address:
    """A router takes the first usable address of each of its LANs."""
    return lan.network_address + 1


def _mesh(default: MeshSpec | None, own: MeshSpec | None) -> MeshSettings:
    """Node mesh keys override the defaults key by key."""
    merged: dict[str, object] = {}
    for spec in (default, own):
        if spec is not None:
            merged.update({k: getattr(spec, k) for k in spec.model_fields_set})
    base = MeshSpec.model_validate(merged)
    return MeshSettings(
        enabled=base.enabled, idle_timeout_s=base.idle_timeout, max_tunnels=base.max_tunnels, device=base.device,
        hole_punching=base.hole_punching,
    )


def plan_lab(spec: TopologySpec, source: Path, file: str) -> Lab:
    return _Planner(spec, source, file).build()
