"""A lab's fabric: its own netns holding one Linux bridge per segment, and the bridge-side end of
every container interface (a veth whose other end is created directly inside the container).

Keeping bridges out of the host namespace means two labs never share a name, Docker's
bridge-netfilter FORWARD DROP (host iptables) never sees lab frames, and removing the netns
removes every bridge and veth at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vpnlab.net.namespace import create_netns, iproute_in, netns_path, open_iproute, remove_netns, write_sysctls

IFNAMSIZ = 15  # longest Linux interface name


@dataclass(frozen=True)
class Link:
    name: str
    alias: str | None
    kind: str | None
    master: str | None  # bridge name for ports
    up: bool


def fabric_netns_name(lab: str) -> str:
    return f"vpnlab-{lab}"


class Fabric:
    """Bridges and veth ports in one fabric netns, through one netlink handle (not thread-safe)."""

    def __init__(self, netns: str, ipr: IPRoute) -> None:
        self.netns = netns
        self._ipr = ipr

    @classmethod
    def create(cls, netns: str) -> Fabric:
        path = create_netns(netns)
        try:
            # The underlay is IPv4: without this, the fabric's bridges and ports send IPv6 router
            # solicitations onto the lab's segments (noise in every underlay capture).
            write_sysctls(path, {"net.ipv6.conf.default.disable_ipv6": "1", "net.ipv6.conf.all.disable_ipv6": "1"})
            fabric = cls(netns, open_iproute(path))
        except BaseException:
            remove_netns(netns)
            raise
        try:
            fabric._set_up("lo")
        except BaseException:
            fabric.close()
            remove_netns(netns)
            raise
        return fabric

    @classmethod
    def open(cls, netns: str) -> Fabric:
        return cls(netns, open_iproute(netns_path(netns)))

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_bridge(self, name: str, alias: str) -> None:
        _check_name(name)
        self._ipr.link("add", ifname=name, kind="bridge")
        index = self._index(name)
        self._ipr.link("set", index=index, ifalias=alias)
        try:
            # Belt and braces: the fabric netns has empty iptables anyway, but a bridge that
            # never hands frames to iptables cannot be hit by any FORWARD policy at all.
            self._ipr.link("set", index=index, kind="bridge", br_nf_call_iptables=0)
        except NetlinkError:
            pass  # kernel without bridge netfilter: nothing to turn off
        self._ipr.link("set", index=index, state="up")

    def attach(
        self, bridge: str, port: str, port_alias: str, target_netns: str, ifname: str, mac: str | None = None
    ) -> None:
        """Create veth `port` on `bridge` whose peer `ifname` appears directly in the namespace at
        path `target_netns` (no temporary name in between, so no rename race with the agent),
        with MAC address `mac` when given."""
        _check_name(port)
        _check_name(ifname)
        master = self._index(bridge)
        fd = os.open(target_netns, os.O_RDONLY)
        try:
            peer: dict[str, object] = {"ifname": ifname, "net_ns_fd": fd}
            if mac is not None:
                peer["address"] = mac
            self._ipr.link("add", ifname=port, kind="veth", master=master, peer=peer)
        finally:
            os.close(fd)
        index = self._index(port)
        self._ipr.link("set", index=index, ifalias=port_alias)
        self._ipr.link("set", index=index, state="up")

    def remove_link(self, name: str) -> bool:
        """Delete a fabric port (both ends of its veth); False when there is none."""
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            self._ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code != 19:  # ENODEV: its namespace took it meanwhile
                raise
        return True

    def port_by_alias(self, alias: str) -> str | None:
        """The fabric port whose ifalias is `alias` ("<node>:<ifname>")."""
        for m in self._ipr.get_links():
            if m.get_attr("IFLA_IFALIAS") == alias:
                return str(m.get_attr("IFLA_IFNAME"))
        return None

    def set_state(self, name: str, up: bool) -> None:
        self._ipr.link("set", index=self._index(name), state="up" if up else "down")

    @property
    def ipr(self) -> IPRoute:
        """The fabric's netlink handle, for traffic control on its ports (net/shaping.py)."""
        return self._ipr

    def links(self) -> list[Link]:
        by_index = {m["index"]: m.get_attr("IFLA_IFNAME") for m in self._ipr.get_links()}
        result = []
        for m in self._ipr.get_links():
            info = m.get_attr("IFLA_LINKINFO")
            master = m.get_attr("IFLA_MASTER")
            result.append(
                Link(
                    name=m.get_attr("IFLA_IFNAME"),
                    alias=m.get_attr("IFLA_IFALIAS"),
                    kind=info.get_attr("IFLA_INFO_KIND") if info else None,
                    master=by_index.get(master) if master else None,
                    up=bool(m["flags"] & 1),
                )
            )
        return result

    def _index(self, name: str) -> int:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise LookupError(f"no interface {name!r} in netns {self.netns}")
        return found[0]

    def _set_up(self, name: str) -> None:
        self._ipr.link("set", index=self._index(name), state="up")


def remove_fabric(netns: str) -> bool:
    """Delete the fabric netns; its bridges and veths go with it. False when it did not exist."""
    return remove_netns(netns)


def configure_interface(
    target_netns: str,
    ifname: str,
    address: IPv4Interface | None = None,
    gateway: IPv4Address | None = None,
) -> None:
    """Set `ifname` (and lo) up inside the namespace at path `target_netns`; optionally give it an
    address and a default route. Routers get only the link up: their agent configures the rest."""
    with iproute_in(target_netns) as ipr:
        for name in ("lo", ifname):
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise LookupError(f"no interface {name!r} in {target_netns}")
            ipr.link("set", index=found[0], state="up")
        index = ipr.link_lookup(ifname=ifname)[0]
        if address is not None:
            ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        if gateway is not None:
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway))


def interface_addresses(target_netns: str) -> dict[str, list[str]]:
    """Interface name -> IPv4 addresses (CIDR) in the namespace at `target_netns`, loopback left out."""
    with iproute_in(target_netns) as ipr:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        result: dict[str, list[str]] = {n: [] for i, n in names.items() if n != "lo"}
        for a in ipr.get_addr(family=2):
            name = names.get(a["index"])
            if name and name != "lo":
                result.setdefault(name, []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        return result


def _check_name(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(f"invalid interface name {name!r} (1-{IFNAMSIZ} chars, no '/' or spaces)")
