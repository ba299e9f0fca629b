"""VRRP by keepalived for a cluster member: its config (templates/keepalived.conf.j2) and its notify lines.

keepalived elects the master and moves the virtual address; the agent never guesses that state.
keepalived writes every state change of an instance to a FIFO (`notify_fifo`, keepalived's own
notify mechanism) as one line, `INSTANCE "<name>" MASTER|BACKUP|FAULT|STOP <priority>`, which the
cluster service reads and acts on (`parse_notify`). Pure functions: dataclasses in, text out.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_NOTIFY = re.compile(r'^(INSTANCE|GROUP) "([^"]+)" (MASTER|BACKUP|FAULT|STOP|DELETED|MASTER_RX_LOWER_PRI) (\d+)$')
VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "DELETED")


class KeepalivedError(ValueError):
    """The instance cannot be expressed as a keepalived config; one line."""


@dataclass(frozen=True)
class VrrpInstance:
    name: str
    interface: str
    virtual_router_id: int  # 1..255, equal on every member of the cluster
    priority: int  # 1..254, highest holds the virtual address
    virtual_addresses: tuple[str, ...]  # CIDR, e.g. "203.0.113.2/24"
    unicast_src: str | None = None  # our address; with unicast_peers, VRRP goes unicast
    unicast_peers: tuple[str, ...] = ()
    advert_int: float = 1.0  # seconds; VRRPv3 takes hundredths (0.1 is ten adverts a second)
    state: str = "BACKUP"  # start as backup; the election decides
    nopreempt: bool = False
    version: int = 3


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value.split("/")[0]))
    except ValueError:
        raise KeepalivedError(f"{what}: {value!r} is not an address") from None


def check(v: VrrpInstance) -> None:
    if not _NAME.match(v.name):
        raise KeepalivedError(f"vrrp instance {v.name!r}: bad name")
    if not 1 <= v.virtual_router_id <= 255:
        raise KeepalivedError(f"vrrp {v.name}: virtual_router_id must be 1..255")
    if not 1 <= v.priority <= 254:
        raise KeepalivedError(f"vrrp {v.name}: priority must be 1..254")
    if v.state not in ("MASTER", "BACKUP"):
        raise KeepalivedError(f"vrrp {v.name}: state must be MASTER or BACKUP")
    if v.version not in (2, 3):
        raise KeepalivedError(f"vrrp {v.name}: version must be 2 or 3")
    if not v.virtual_addresses:
        raise KeepalivedError(f"vrrp {v.name}: needs a virtual address")
    for vip in v.virtual_addresses:
        try:
            ipaddress.ip_interface(vip)
        except ValueError:
            raise KeepalivedError(f"vrrp {v.name}: virtual address {vip!r} is not an address") from None
    if v.unicast_peers:
        if not v.unicast_src:
            raise KeepalivedError(f"vrrp {v.name}: unicast peers need unicast_src")
        for addr in (v.unicast_src, *v.unicast_peers):
            _address(addr, f"vrrp {v.name}")
    # VRRPv2 counts whole seconds; VRRPv3 centiseconds (RFC 5798: 12 bits of them)
    low = 1.0 if v.version == 2 else 0.01
    if not low <= v.advert_int <= 40.95 or (v.version == 2 and v.advert_int != int(v.advert_int)):
        raise KeepalivedError(f"vrrp {v.name}: advert_int must be {'1..40 whole' if v.version == 2 else '0.01..40.95'} s")


def advert_text(seconds: float) -> str:
    """advert_int as keepalived reads it: '1', '0.1', '0.25'."""
    return f"{round(seconds, 2):g}"


def render(node: str, instances: list[VrrpInstance], notify_fifo: str | None = None,
           nice: int | None = None) -> str:
    for v in instances:
        check(v)
    versions = {v.version for v in instances}
    if len(versions) > 1:
        raise KeepalivedError("all instances of one node must use the same VRRP version")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template("keepalived.conf.j2").render(
        node=node, router_id=node, instances=instances, notify_fifo=notify_fifo,
        version=versions.pop() if versions else 3, advert=advert_text, nice=nice,
    )


@dataclass(frozen=True)
class VrrpNotify:
    kind: str  # "INSTANCE" or "GROUP"
    name: str
    state: str  # MASTER | BACKUP | FAULT | STOP | DELETED | MASTER_RX_LOWER_PRI
    priority: int


def parse_notify(line: str) -> VrrpNotify | None:
    """One line keepalived wrote to the notify FIFO; None for anything else (never raises)."""
    m = _NOTIFY.match(line.strip())
    if m is None:
        return None
    return VrrpNotify(m.group(1), m.group(2), m.group(3), int(m.group(4)))
