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
from vpnlab_agent.netlink_routes import RouteBatch, RouteRequest
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
    with RouteBatch() as b:
        out["codes"] = b.run([(cmd, req) for cmd, _, req in cases])
        # the same adds again: each refused on its own, the replaces fine; an unreachable gateway refused
        out["again"] = b.run([(cmd, req) for cmd, _, req in cases] + [("add", RouteRequest.of("10.7.0.0/24", gateway="203.0.113.1"))])
        out["many"] = b.run([("add", RouteRequest.of(f"10.{100 + i // 250}.{i % 250}.0/24", type="unreachable", metric=4090)) for i in range(300)])
        out["many_del"] = b.run([("del", RouteRequest.of(f"10.{100 + i // 250}.{i % 250}.0/24", type="unreachable", metric=4090)) for i in range(300)])
print(json.dumps(out))
"""

DELETE = r"""
import sys
from pyroute2 import IPRoute
from vpnlab_agent.netlink_routes import RouteBatch, RouteRequest
ipr = IPRoute()
idx = ipr.link_lookup(ifname="d0")[0]
if sys.argv[1] == "pyroute2":  # pyroute2 deletes what the batch added
    ipr.route("del", dst="10.1.0.0/24", type="unreachable", priority=4090)
    ipr.route("del", dst="10.5.0.0/24", oif=idx, priority=1000, table=100)
else:  # the batch deletes what pyroute2 added
    with RouteBatch() as b:
        assert b.run([("del", RouteRequest.of("10.1.0.0/24", type="unreachable", metric=4090)),
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
