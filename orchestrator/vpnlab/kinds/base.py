"""A node kind turns a resolved Node into what the runtime must start: a ContainerSpec.

Kinds are small plug-ins (router = our agent, strongswan, host) registered in registry.py; the
runtime knows nothing about roles or IPsec, only ContainerSpecs and Links.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vpnlab.topology.model import Lab, Node

# The lab is IPv4 (the topology has no IPv6 addresses; the fabric turns it off too). With IPv6 on,
# every interface of every container does address autoconfiguration, duplicate address detection,
# router solicitations and MLD reports: kernel work for nothing, times hundreds of containers on a
# large deploy, and noise in every capture.
NO_IPV6_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}


@dataclass(frozen=True)
class ContainerSpec:
    node: str  # node name; the runtime derives the container name and labels from lab + node
    command: tuple[str, ...]  # main process
    # absolute path in container -> content (mode 0600), there before the command needs it; the Docker
    # runtime writes them in this order just after start: the agent waits for its config, so it comes last
    files: dict[str, bytes] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    cap_add: tuple[str, ...] = ("NET_ADMIN", "NET_RAW")
    devices: tuple[str, ...] = ("/dev/net/tun",)
    env: dict[str, str] = field(default_factory=dict)
    has_agent: bool = True  # True: deploy waits until `python3 -m vpnlab_agent ctl status` reports ready
    image: str | None = None  # None: the lab's node image; else a tag built on demand (image_libreswan.py)


class Kind(Protocol):
    name: str  # the value of `implementation` (or "host") in the topology file

    def container_spec(self, lab: Lab, node: Node) -> ContainerSpec: ...
