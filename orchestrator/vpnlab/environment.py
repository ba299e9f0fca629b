"""Checks of the machine a lab runs on; each failure says what to do about it."""

from __future__ import annotations

import os
import shutil
import subprocess
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


def kernel_has_esp() -> bool:
    """Whether this host's kernel accepts an ESP state (probed, not guessed from versions).

    Uses `ip xfrm` in a throwaway network namespace so nothing touches the host's own XFRM tables.
    """
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return False
    script = (
        "ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x00000101 mode tunnel "
        "aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128"
    )
    try:
        done = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
