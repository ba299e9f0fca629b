"""Batched route requests against the real kernel: the routes they make are the ones pyroute2 makes
for the same arguments, each request gets its own answer, and either can delete the other's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.root

SCRIPT = r"""
import json, socket, sys
from pyroute2 import IPRoute
from vpnlab_agent.netlink_routes import RouteRequest, run
from vpnlab_agent.rtnl import Rtnl
ipr = IPRoute()
idx = ipr.link_lookup(ifname="d0")[0]
mode = sys.argv[1]
cases = [
    ("add", dict(dst="10.1.0.0/24", type="unreachable", priority=4090), RouteRequest.of("10.1.0.0/24", type="unreachable", metric=4090)),
    ("add", dict(dst="10.2.0.0/24", gateway="10.9.0.2"), RouteRequest.of("10.2.0.0/24", gateway="10.9.0.2")),
    ("replace", dict(dst="10.4.0.0/24", oif=idx, priority=0, prefsrc="10.9.0.1"), RouteRequest.of("10.4.0.0/24", oif=idx, prefsrc="10.9.0.1")),
    ("replace", dict(dst="10.5.0.0/24", oif=idx, priority=1000, table=100), RouteRequest.of("10.5.0.0/24", oif=idx, metric=1000, table=100)),
    ("replace", dict(dst="10.6.0.1/32", oif=idx, gateway="10.9.0.2", table=1000), RouteRequest.of("10.6.0.1/32", oif=idx, gateway="10.9.0.2", table=1000)),
]
out = {}
if mode == "pyroute2":
    for cmd, kw, _ in cases:
        ipr.route(cmd, **kw)
else:
    with Rtnl() as b:
        out["codes"] = run(b, [(cmd, req) for cmd, _, req in cases])
        # the same adds again: each refused on its own, the replaces fine; an unreachable gateway refused
        out["again"] = run(b, [(cmd, req) for cmd, _, req in cases] + [("add", RouteRequest.of("10.7.0.0/24", gateway="203.0.113.1"))])
        out["many"] = run(b, [("add", RouteRequest.of(f"10.{100 + i // 250}.{i % 250}.0/24", type="unreachable", metric=4090)) for i in range(300)])
        out["many_del"] = run(b, [("del", RouteRequest.of(f"10.{100 + i // 250}.{i % 250}.0/24", type="unreachable", metric=4090)) for i in range(300)])
print(json.dumps(out))
"""

DELETE = r"""
import sys
from pyroute2 import IPRoute
from vpnlab_agent.netlink_routes import RouteRequest, run
from vpnlab_agent.rtnl import Rtnl
ipr = IPRoute()
idx = ipr.link_lookup(ifname="d0")[0]
if sys.argv[1] == "pyroute2":  # pyroute2 deletes what the batch added
    ipr.route("del", dst="10.1.0.0/24", type="unreachable", priority=4090)
    ipr.route("del", dst="10.5.0.0/24", oif=idx, priority=1000, table=100)
else:  # the batch deletes what pyroute2 added
    with Rtnl() as b:
        assert run(b, [("del", RouteRequest.of("10.1.0.0/24", type="unreachable", metric=4090)),
                      ("del", RouteRequest.of("10.5.0.0/24", oif=idx, metric=1000, table=100)),
                      ("del", RouteRequest.of("10.99.0.0/24"))]) == [0, 0, 3], "ESRCH for the missing one"
"""


def _ns() -> str:
    ns = f"vlnr-{uuid.uuid4().hex[:6]}"
    for cmd in (["netns", "add", ns], ["-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
                ["-n", ns, "link", "set", "d0", "up"], ["-n", ns, "link", "set", "d1", "up"],
                ["-n", ns, "addr", "add", "10.9.0.1/24", "dev", "d0"]):
        subprocess.run(["ip", *cmd], check=True, capture_output=True)
    return ns


def _py(ns: str, script: str, arg: str) -> str:
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, arg],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _routes(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-d", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    return sorted(line.strip() for line in out.splitlines()
                  if line.strip() and not line.startswith(("local", "broadcast", "multicast", "fe80", "ff00", "anycast"))
                  and "proto kernel" not in line)


@pytest.fixture(autouse=True)
def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")


def test_batched_routes_are_the_routes_pyroute2_makes() -> None:
    a, b = _ns(), _ns()
    try:
        _py(a, SCRIPT, "pyroute2")
        out = json.loads(_py(b, SCRIPT, "batch"))
        assert out["codes"] == [0, 0, 0, 0, 0]
        assert out["again"] == [17, 17, 0, 0, 0, 101]  # EEXIST for the adds, ENETUNREACH for the bad gateway
        assert out["many"] == [0] * 300 and out["many_del"] == [0] * 300  # more than one send's worth
        assert _routes(a) == _routes(b) and len(_routes(a)) == 5, _routes(b)
        _py(a, DELETE, "batch")
        _py(b, DELETE, "pyroute2")
        assert _routes(a) == _routes(b) and len(_routes(a)) == 3
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


RTNL = r"""
import json, socket
from pyroute2 import IPRoute
from vpnlab_agent.rtnl import Rtnl, RtnlError
out = {}
with Rtnl() as rt, IPRoute() as ipr:
    d0 = rt.link_index("d0")
    out["index"] = [d0 == ipr.link_lookup(ifname="d0")[0], rt.link_index("nope")]
    rt.set_link(d0, mtu=1400, txqlen=500, up=True)
    rt.add_address(d0, "10.8.0.1", 24)
    rt.add_address(d0, "2001:db8::1", 64, socket.AF_INET6)
    try:
        rt.add_address(d0, "10.8.0.1", 24)
    except RtnlError as exc:
        out["again"] = [exc.code, str(exc)]
    ipr.route("add", dst="10.20.0.0/16", gateway="10.8.0.2", priority=7, table=300)
    ipr.route("add", dst="10.21.0.0/16", type="unreachable")
    links = {l.name: [l.index, l.up, l.mtu] for l in rt.links()}
    out["links"] = links["d0"] == [d0, True, 1400] and links["lo"][2] == 65536
    theirs = sorted((m.get_attr("IFA_ADDRESS"), m["prefixlen"], m["index"]) for m in ipr.get_addr())
    out["addresses"] = sorted((a.address, a.prefixlen, a.index) for a in rt.addresses()) == theirs
    ours = sorted((r.dst, r.dst_len, r.table, r.type, r.gateway, r.oif, r.metric) for r in rt.routes())
    theirs = sorted((m.get_attr("RTA_DST"), m["dst_len"], m.get_attr("RTA_TABLE"), m["type"], m.get_attr("RTA_GATEWAY"),
                     m.get_attr("RTA_OIF") or 0, m.get_attr("RTA_PRIORITY") or 0) for m in ipr.route("dump", family=socket.AF_INET))
    out["routes"] = ours == theirs and ("10.20.0.0", 16, 300, 1, "10.8.0.2", d0, 7) in ours
    hop = rt.route_to("10.8.0.9")
    out["route_to"] = [hop.oif == d0, hop.gateway, hop.prefsrc]
    try:
        rt.route_to("10.21.0.1")
    except RtnlError as exc:
        out["unreachable"] = exc.code
    rt.delete_address(d0, "10.8.0.1", 24)
    out["after"] = [a.address for a in rt.addresses(socket.AF_INET) if a.index == d0]
    rt.delete_link(d0)
    out["gone"] = rt.link_index("d0")
print(json.dumps(out))
"""


def test_rtnl_reads_what_pyroute2_reads_and_its_changes_take_effect() -> None:
    ns = _ns()
    try:
        out = json.loads(_py(ns, RTNL, "-"))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert out["index"] == [True, None]
    assert out["again"] == [17, "(17, 'File exists')"]
    assert out["links"] and out["addresses"] and out["routes"], out
    assert out["route_to"] == [True, None, "10.8.0.1"]
    assert out["unreachable"] == 113  # EHOSTUNREACH from the unreachable route
    assert out["after"] == ["10.9.0.1"] and out["gone"] is None
