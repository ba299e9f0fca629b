"""The fabric code against plain network namespaces (no Docker): bridges, veths into another
namespace, host-side interface config, and removal."""

from __future__ import annotations

import os
import time
import subprocess
import sys
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface

import pytest

from vpnlab.net.fabric import Fabric, configure_interface, interface_addresses, remove_fabric
from vpnlab.net.namespace import create_netns, netns_exists, netns_path, open_iproute, remove_netns

pytestmark = pytest.mark.root


def _ns_exec(ns: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)


# The host has no ping binary; a raw-socket ICMP echo is the same test without one.
_PING = """
import os, socket, struct, sys, time
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
ident = os.getpid() & 0xFFFF
hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"vpnlab"
csum = sum(struct.unpack("!%dH" % (len(hdr) // 2), hdr))
csum = (csum >> 16) + (csum & 0xFFFF); csum = ~(csum + (csum >> 16)) & 0xFFFF
s.sendto(hdr[:2] + struct.pack("!H", csum) + hdr[4:], (dst, 0))
end = time.monotonic() + 2
while time.monotonic() < end:
    data, addr = s.recvfrom(2048)
    icmp = data[(data[0] & 15) * 4:]
    if addr[0] == dst and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


def _ping(ns: str, dst: str) -> subprocess.CompletedProcess[str]:
    return _ns_exec(ns, sys.executable, "-c", _PING, dst)


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:6]
    n = {"fabric": f"vltf-{tag}", "a": f"vlta-{tag}", "b": f"vltb-{tag}"}
    yield n
    for ns in n.values():
        remove_netns(ns)


def test_hosts_on_one_bridge_ping_each_other_despite_host_forward_drop(names: dict[str, str]) -> None:
    # Docker sets the host's FORWARD policy to DROP and turns bridge netfilter on; the fabric's
    # own netns has its own empty iptables, so frames across its bridges must still pass.
    host_rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    fabric = Fabric.create(names["fabric"])
    try:
        create_netns(names["a"])
        create_netns(names["b"])
        fabric.add_bridge("inet", "inet-segment")
        fabric.attach("inet", "p0-0", "a:eth0", netns_path(names["a"]), "eth0")
        fabric.attach("inet", "p1-0", "b:eth0", netns_path(names["b"]), "eth0")
        links = {link.name: link for link in fabric.links()}
    finally:
        fabric.close()
    assert links["inet"].kind == "bridge" and links["inet"].alias == "inet-segment" and links["inet"].up
    assert links["p0-0"].master == "inet" and links["p0-0"].alias == "a:eth0" and links["p0-0"].up
    assert links["p1-0"].master == "inet"
    # an IPv4 underlay: the fabric's devices send no IPv6 (router solicitations) onto the segments
    for dev in ("inet", "p0-0"):
        assert _ns_exec(names["fabric"], "cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").stdout.strip() == "1"
    bridge = _ns_exec(names["fabric"], "ip", "-d", "link", "show", "inet").stdout
    if "nf_call_iptables" in bridge:
        assert "nf_call_iptables 0" in bridge

    configure_interface(netns_path(names["a"]), "eth0", IPv4Interface("192.0.2.1/24"))
    configure_interface(netns_path(names["b"]), "eth0", IPv4Interface("192.0.2.2/24"), IPv4Address("192.0.2.1"))
    assert interface_addresses(netns_path(names["a"])) == {"eth0": ["192.0.2.1/24"]}
    route = _ns_exec(names["b"], "ip", "route", "show", "default").stdout
    assert "via 192.0.2.1 dev eth0" in route

    ping = _ping(names["a"], "192.0.2.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # ... and the lab added nothing to the host's iptables to get there
    assert subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout == host_rules


def test_removing_the_fabric_removes_its_veths_and_a_second_removal_is_a_noop(names: dict[str, str]) -> None:
    create_netns(names["a"])
    with Fabric.create(names["fabric"]) as fabric:
        fabric.add_bridge("l0", "lan-x")
        fabric.attach("l0", "p0-0", "a:lan0", netns_path(names["a"]), "lan0")
    assert "lan0" in interface_addresses(netns_path(names["a"]))
    assert remove_fabric(names["fabric"]) is True
    assert not netns_exists(names["fabric"])
    assert remove_fabric(names["fabric"]) is False
    # The veth pair dies with the fabric end once the kernel frees the namespace.
    deadline = time.monotonic() + 5
    while "lan0" in interface_addresses(netns_path(names["a"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "lan0" not in interface_addresses(netns_path(names["a"]))


def test_creating_an_existing_fabric_is_refused(names: dict[str, str]) -> None:
    with Fabric.create(names["fabric"]):
        pass
    with pytest.raises(FileExistsError):
        Fabric.create(names["fabric"])


def test_open_iproute_leaves_the_calling_thread_in_its_own_namespace(names: dict[str, str]) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    create_netns(names["a"])
    ipr = open_iproute(netns_path(names["a"]))
    try:
        inside = {m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
    finally:
        ipr.close()
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
    assert inside == {"lo"}  # the socket really is in the other namespace


def test_interface_names_longer_than_linux_allows_are_refused(names: dict[str, str]) -> None:
    create_netns(names["a"])
    with Fabric.create(names["fabric"]) as fabric:
        with pytest.raises(ValueError, match="invalid interface name"):
            fabric.add_bridge("a-very-long-bridge-name", "x")
        fabric.add_bridge("l0", "x")
        with pytest.raises(ValueError, match="invalid interface name"):
            fabric.attach("l0", "p0-0", "x", netns_path(names["a"]), "sixteen-chars-xx")
