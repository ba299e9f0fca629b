"""Checks of the machine a lab runs on; each failure says what to do about it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vpnlab.errors import EnvironmentProblem

CAP_NET_ADMIN = 12  # linux/capability.h
TUN_DEVICE = Path("/dev/net/tun")


def check_docker() -> Any:
    """Return a connected Docker SDK client, or raise EnvironmentProblem saying how to get one."""
    import docker

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # DockerException or requests' connection errors: no engine either way
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise EnvironmentProblem(
            f"no Docker engine reachable at {where} ({reason}): run `make docker` "
            "(installs docker.io and starts dockerd) or start dockerd"
        ) from exc
    return client


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path, encoding="ascii") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    """Wiring a lab needs netns, veths and bridges (root or CAP_NET_ADMIN) and the TUN device."""
    if os.geteuid() != 0 and not effective_caps() & (1 << CAP_NET_ADMIN):
        raise EnvironmentProblem(
            "vpnlab needs root or CAP_NET_ADMIN to create namespaces, veths and bridges: run it with sudo"
        )
    if not TUN_DEVICE.exists():
        raise EnvironmentProblem(
            f"{TUN_DEVICE} is missing: load the tun module (`modprobe tun`) or create it "
            "(`mkdir -p /dev/net && mknod /dev/net/tun c 10 200`)"
        )

