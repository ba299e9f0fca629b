"""The `vpnlab` command as a user runs it (a real process, real engine): deploy, inspect, exec,
destroy, with their exit codes and the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _vpnlab(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vpnlab", *args], cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )


def test_the_cli_lifecycle(
    node_image: str,
    lab_name: Callable[[], str],
    topologies: Path,
    leftovers: Callable[[str], list[str]],
) -> None:
    name, repo = lab_name(), topologies.parent
    up = _vpnlab(repo, "deploy", "topologies/minimal.yml", "--name", name)
    assert up.returncode == 0, up.stderr
    assert f"lab {name} is up: 6 containers" in up.stdout
    assert f"vpnlab inspect {name}" in up.stdout and f"ip netns exec vpnlab-{name} tcpdump -ni inet" in up.stdout

    again = _vpnlab(repo, "deploy", "topologies/minimal.yml", "--name", name)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [f"error: lab {name} already exists: `vpnlab destroy {name}` first, or deploy with --reconfigure"]

    hostname = _vpnlab(repo, "exec", name, "br1-h1", "--", "hostname")
    assert (hostname.returncode, hostname.stdout) == (0, "br1-h1\n")
    failing = _vpnlab(repo, "exec", name, "hub", "--", "sh", "-c", "echo to-stderr >&2; exit 5")
    assert (failing.returncode, failing.stderr) == (5, "to-stderr\n")
    missing = _vpnlab(repo, "exec", name, "zz", "--", "true")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: lab {name} has no node 'zz' (nodes: br1, br1-h1, br2, br2-h1, hub, hub-h1)"

    table = _vpnlab(repo, "inspect", name)
    assert table.returncode == 0 and all(n in table.stdout for n in ("hub-h1", "br1", "br2-h1"))
    listing = json.loads(_vpnlab(repo, "inspect", "--json").stdout)
    assert {"name": name, "nodes": 6, "running": 6, "fabric_present": True}.items() <= next(
        lab for lab in listing["labs"] if lab["name"] == name
    ).items()

    down = _vpnlab(repo, "destroy", "topologies/minimal.yml", "--name", name)
    assert down.returncode == 0 and f"destroyed {name}: 6 containers, fabric netns removed" in down.stdout
    assert leftovers(name) == []
    noop = _vpnlab(repo, "destroy", name)
    assert noop.returncode == 0 and "nothing to destroy" in noop.stdout
    gone = _vpnlab(repo, "inspect", name)
    assert gone.returncode == 1 and gone.stderr.startswith(f"error: no lab {name} is running")
