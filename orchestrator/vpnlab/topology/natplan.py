"""NAT devices in the address plan (docs/topology.md, "NAT devices").

A branch with `nat:` sits behind a NAT device: its wan0 gets a private address on the device's
inside segment and a default route via the device, and the device holds the public address. The
inside segments come from 100.64.0.0/10 (RFC 6598, the carriers' shared address space), one /24
per device, skipping anything the lab already uses. Pure planning, no I/O.

`nat: true` or `nat: <type>` gives the branch its own device, `<branch>-nat`, placed in file order
where the branch is (so it takes the public address the branch would have had); `nat: <name>`
puts it behind a declared `role: nat` node, which several branches may share (carrier-grade NAT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from vpnlab.errors import TopologyError
from vpnlab.topology.schema import DEFAULT_NAT_TYPE, NAT_TYPES, NODE_NAME_RE, NodeSpec

INSIDE_POOL = IPv4Network("100.64.0.0/10")
DEVICE_OFFSET = 1  # the device's inside address: .1
FIRST_BRANCH_OFFSET = 10  # branches from .10 upward, in lab order
DEFAULT_MAPPING_TIMEOUT_S = 60
IMPLICIT_SUFFIX = "-nat"

Fail = Callable[[str, str], TopologyError]


@dataclass(frozen=True)
class NatPlan:
    device_of: dict[str, str]  # branch -> NAT device
    inside: dict[str, IPv4Network]  # device -> inside segment subnet

    def device_address(self, device: str) -> IPv4Interface:
        net = self.inside[device]
        return IPv4Interface(f"{net.network_address + DEVICE_OFFSET}/{net.prefixlen}")

    def branches_of(self, device: str) -> tuple[str, ...]:
        return tuple(b for b, d in self.device_of.items() if d == device)

    def branch_address(self, branch: str) -> IPv4Interface:
        device = self.device_of[branch]
        net = self.inside[device]
        index = self.branches_of(device).index(branch)
        return IPv4Interface(f"{net.network_address + FIRST_BRANCH_OFFSET + index}/{net.prefixlen}")


def segment_name(device: str) -> str:
    return f"nat-{device}"


def expand_nodes(nodes: dict[str, NodeSpec], fail: Fail) -> dict[str, NodeSpec]:
    """The nodes with an implicit NAT device inserted before every branch that asks for its own."""
    declared = {n for n, s in nodes.items() if s.role == "nat"}
    out: dict[str, NodeSpec] = {}
    for name, spec in nodes.items():
        nat = spec.nat
        if spec.role == "nat" and name in NAT_TYPES:
            raise fail(f"nodes.{name}", f"a NAT device may not be named like a NAT type ({', '.join(NAT_TYPES)})")
        if spec.role == "branch" and (nat is True or nat in NAT_TYPES):
            device = name + IMPLICIT_SUFFIX
            if not NODE_NAME_RE.match(device) or device in nodes:
                why = "too long" if not NODE_NAME_RE.match(device) else "already taken"
                raise fail(
                    f"nodes.{name}.nat",
                    f"its own NAT device would be named {device!r}, which is {why}: declare a node with "
                    "role: nat and give its name here",
                )
            out[device] = NodeSpec(role="nat", type=DEFAULT_NAT_TYPE if nat is True else nat)  # type: ignore[arg-type]
        elif spec.role == "branch" and isinstance(nat, str) and nat not in declared:
            listed = ", ".join(sorted(declared)) or "none"
            raise fail(
                f"nodes.{name}.nat",
                f"unknown NAT device {nat!r} (NAT devices in this lab: {listed}; or true, {', '.join(NAT_TYPES)})",
            )
        out[name] = spec
    return out


def plan_nat(nodes: dict[str, NodeSpec], taken: list[IPv4Network], fail: Fail) -> NatPlan:
    """Which device each NATed branch sits behind, and one free inside /24 per device."""
    device_of: dict[str, str] = {}
    for name, spec in nodes.items():
        if spec.role != "branch" or spec.nat is False:
            continue
        device_of[name] = name + IMPLICIT_SUFFIX if (spec.nat is True or spec.nat in NAT_TYPES) else str(spec.nat)
    inside: dict[str, IPv4Network] = {}
    subnets = INSIDE_POOL.subnets(new_prefix=24)
    for name, spec in nodes.items():
        if spec.role != "nat":
            continue
        for net in subnets:
            if not any(net.overlaps(t) for t in taken):
                inside[name] = net
                break
        else:  # pragma: no cover - 16384 subnets
            raise fail(f"nodes.{name}", "no free inside subnet left in 100.64.0.0/10")
    for device in inside:
        count = sum(1 for d in device_of.values() if d == device)
        if count > 200:
            raise fail(f"nodes.{device}", f"{count} branches behind one NAT device: at most 200")
    return NatPlan(device_of=device_of, inside=inside)

