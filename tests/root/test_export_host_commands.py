"""The `exec` lines an exported end host runs, run by real iproute2 in a network namespace: they give
eth0 the planned address and the default route via the router (what lab.py does from outside)."""

from __future__ import annotations

import json
import shlex
import subprocess
import uuid
from pathlib import Path

import pytest

from vpnlab.export import containerlab as clab
from vpnlab.net.namespace import create_netns, remove_netns
from vpnlab.topology import load_topology

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def test_host_exec_lines_configure_eth0_and_the_default_route() -> None:
    lab = load_topology(REPO / "topologies" / "hub-spoke.yml")
    host = lab.hosts[0]
    lines = clab.export_lab(lab, "img").files[0].topology["topology"]["nodes"][host.name]["exec"]
    ns = f"vx-{uuid.uuid4().hex[:8]}"
    create_netns(ns)
    try:
        run = lambda *argv: subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=10)
        assert run("ip", "link", "add", "name", "eth0", "type", "veth", "peer", "name", "peer0").returncode == 0
        for line in lines:
            done = run(*shlex.split(line))
            assert done.returncode == 0, (line, done.stderr)
        addrs = json.loads(run("ip", "-j", "-4", "address", "show", "dev", "eth0").stdout)
        assert [f"{a['local']}/{a['prefixlen']}" for a in addrs[0]["addr_info"]] == [str(host.interfaces[0].address)]
        routes = json.loads(run("ip", "-j", "route", "show", "default").stdout)
        assert [(r["gateway"], r["dev"]) for r in routes] == [(str(host.gateway), "eth0")]
    finally:
        remove_netns(ns)
