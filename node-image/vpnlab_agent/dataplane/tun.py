"""A layer-3 TUN device (no packet-info header) set up through pyroute2.

`open_tun()` returns a blocking file descriptor: one read() is one IPv4 packet that the kernel routed
into the device, one write() injects one packet into the kernel as if it arrived on the device.
"""

from __future__ import annotations

import fcntl
import os
import struct

from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
TUN_PATH = "/dev/net/tun"


class TunError(Exception):
    """The TUN device could not be created or configured."""


def open_tun(name: str, *, multi_queue: bool = False) -> int:
    """Create (or, with multi_queue, attach one more queue to) TUN device `name`; returns the fd."""
    if len(name.encode()) > 15:
        raise TunError(f"interface name {name!r} is longer than 15 bytes")
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"cannot open {TUN_PATH}: {e.strerror} (container needs --device /dev/net/tun)") from e
    flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise TunError(f"TUNSETIFF {name}: {e.strerror}") from e
    return fd


def configure(name: str, mtu: int, txqueuelen: int = 1000) -> int:
    """Set MTU and queue length, bring the device up; returns its ifindex."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise TunError(f"TUN device {name} vanished")
        idx = found[0]
        ipr.link("set", index=idx, mtu=mtu, txqlen=txqueuelen, state="up")
    return idx


def delete(name: str) -> None:
    """Remove the device if it still exists (it also goes when its last fd closes)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            try:
                ipr.link("del", index=found[0])
            except Exception:  # already gone: closing the fd raced us
                pass
