"""Network namespaces: named ones (`ip netns` style, under /var/run/netns) and containers' by pid.

A netlink socket belongs to the namespace it was created in, so `open_iproute` switches only the
calling thread into the target namespace for the moment of creating the socket, then switches
back. That costs a couple of milliseconds, where pyroute2's NetNS would fork a helper process.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

NETNS_RUN_DIR = "/var/run/netns"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def pid_netns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def create_netns(name: str) -> str:
    """Create a named netns; FileExistsError when it is already there. Returns its path."""
    if netns_exists(name):
        raise FileExistsError(errno.EEXIST, "netns exists", name)
    _netns.create(name)
    return netns_path(name)


def remove_netns(name: str) -> bool:
    """Remove a named netns; False when there was none (so a second destroy is a no-op)."""
    if not netns_exists(name):
        return False
    _netns.remove(name)
    return True


@contextmanager
def _entered(path: str) -> Iterator[None]:
    """This thread inside the namespace at `path` for the block, back in its own after it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            _netns.setns(target)
            try:
                yield
            finally:
                # Always come back, or this thread would keep working in the wrong namespace.
                _netns.setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def open_iproute(path: str) -> IPRoute:
    """An IPRoute whose socket lives in the namespace at `path` (a netns file or /proc/<pid>/ns/net)."""
    with _entered(path):
        return IPRoute()


def write_sysctls(path: str, values: dict[str, str]) -> None:
    """Write net sysctls ("net.ipv6.conf.default.disable_ipv6") inside the namespace at `path`:
    /proc/sys/net shows the namespace of the thread that opens it."""
    with _entered(path):
        for key, value in values.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)


@contextmanager
def iproute_in(path: str) -> Iterator[IPRoute]:
    ipr = open_iproute(path)
    try:
        yield ipr
    finally:
        ipr.close()
