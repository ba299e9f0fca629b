"""The userspace engine's routing contexts without root: real ESP bytes with the HSVPN trailer into
ContextPlane.deliver. A tag outside the SA's map (forged: a context the peer was not given; unknown:
no context at all) is dropped and counted, never delivered; a tagged packet lands in its context's
device only, after that context's own selectors; per-context tables route by context."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import struct

import pytest

from vpnlab_agent.contexts.trailer import HsvpnTrailer
from vpnlab_agent.dataplane.context_io import ContextPlane
from vpnlab_agent.dataplane.context_tables import ContextEntry, ContextSpec
from vpnlab_agent.dataplane.sa_table import NO_ROUTE, make_entry
from vpnlab_agent.esp.ciphers import PacketBuffer
from vpnlab_agent.esp.codec import EspError, EspOutbound
from vpnlab_agent.esp.trailer import RFC4303
from vpnlab_agent.sa import ChildSA, EspAlgorithm

GCM = EspAlgorithm("aes-gcm-16", 128)
KEY_IN, KEY_OUT = os.urandom(20), os.urandom(20)
# corp and guest use the same addresses (10.1.x), voice its own (10.2.x)
CONTEXTS = [
    ContextSpec("corp", 101, {"br1": (("10.1.0.0/24",), ("10.1.1.0/24",))}),
    ContextSpec("voice", 102, {"br1": (("10.2.0.0/24",), ("10.2.1.0/24",))}),
    ContextSpec("guest", 103, {"br1": (("10.1.0.0/24",), ("10.1.1.0/24",))}),
]
TAGS = {1: "corp", 3: "guest"}  # voice exists here but was not negotiated with br1


def hsvpn_sa(tags: dict[int, str] = TAGS) -> ChildSA:
    return ChildSA("br1", 7, 0x1001, 0x2002, GCM, KEY_IN, KEY_OUT, b"", b"", "198.51.100.10", "198.51.100.11",
                   4500, 4500, ("10.1.0.0/24", "10.2.0.0/24"), ("10.1.1.0/24", "10.2.1.0/24"),
                   trailer=HsvpnTrailer(tags))


def ipv4(src: str, dst: str, n: int = 60) -> bytes:
    pkt = bytearray(n)
    pkt[0], pkt[9] = 0x45, 17
    struct.pack_into("!H", pkt, 2, n)
    pkt[12:16], pkt[16:20] = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    return bytes(pkt)


def sender(tags: dict[int, str]) -> EspOutbound:
    """br1's side of the SA: it encrypts with our inbound key, with whatever trailer it likes."""
    return EspOutbound(0x1001, GCM, KEY_IN, b"", trailer=HsvpnTrailer(tags), rng=os.urandom)


@pytest.fixture
def plane() -> ContextPlane:
    p = ContextPlane(CONTEXTS, None, offload=False, tx_thread=False, budget=1472)
    for name in ("corp", "voice", "guest"):
        r, w = os.pipe()
        os.set_blocking(r, False)
        p.fds[name] = w
        p._reads = getattr(p, "_reads", {}) | {name: r}  # type: ignore[attr-defined]
        p.gro[name] = None  # type: ignore[assignment]
    p.tables.add(make_entry(hsvpn_sa(), lambda: 1.0, os.urandom))
    yield p
    for name in ("corp", "voice", "guest"):
        os.close(p.fds[name])
        os.close(p._reads[name])  # type: ignore[attr-defined]


PEER = ("198.51.100.11", 4500)


def receive(p: ContextPlane, esp: bytes, addr: tuple[str, int] = PEER) -> bool:
    src, dst = PacketBuffer(4096), PacketBuffer(4096)
    src.data[:len(esp)] = esp
    return p.deliver(src, len(esp), 0x1001, dst, addr)


def delivered(p: ContextPlane) -> dict[str, int]:
    out = {}
    for name, r in p._reads.items():  # type: ignore[attr-defined]
        try:
            out[name] = len(os.read(r, 65536))
        except BlockingIOError:
            pass
    return out


def test_a_tagged_packet_lands_in_its_context_only(plane: ContextPlane) -> None:
    out = sender(TAGS)
    assert receive(plane, out.encapsulate(ipv4("10.1.1.10", "10.1.0.10"), tag=3))
    assert delivered(plane) == {"guest": 60}
    assert receive(plane, out.encapsulate(ipv4("10.1.1.10", "10.1.0.10"), tag=1))
    assert delivered(plane) == {"corp": 60}
    (guest,) = plane.tables.status()["guest"]
    assert (guest["tag"], guest["packets_in"], guest["bytes_in"]) == (3, 1, 60)


def test_a_forged_tag_and_an_unknown_tag_are_dropped_and_counted(plane: ContextPlane) -> None:
    # br1 tags a packet for voice, a context it was not given on this SA; then a tag nobody has
    out = sender({1: "corp", 2: "voice", 3: "guest", 77: "x"})
    assert receive(plane, out.encapsulate(ipv4("10.2.1.10", "10.2.0.10"), tag=2))
    assert receive(plane, out.encapsulate(ipv4("10.1.1.10", "10.1.0.10"), tag=77))
    assert delivered(plane) == {}
    assert plane.tag_dropped == 2 and plane.tables.tag_dropped[0x1001] == 2


def test_a_context_accepts_only_its_own_selectors(plane: ContextPlane) -> None:
    # guest's selectors towards br1 are 10.1.x: a guest-tagged packet for voice's addresses is refused
    assert receive(plane, sender(TAGS).encapsulate(ipv4("10.2.1.10", "10.2.0.10"), tag=3))
    assert delivered(plane) == {} and plane.policy_in == 1


def test_an_untagged_packet_on_a_tagged_sa_is_malformed(plane: ContextPlane) -> None:
    plain = EspOutbound(0x1001, GCM, KEY_IN, b"", rng=os.urandom)
    with pytest.raises(EspError):
        receive(plane, plain.encapsulate(ipv4("10.1.1.10", "10.1.0.10")))
    assert delivered(plane) == {}


def test_outbound_is_routed_per_context_with_the_context_tag(plane: ContextPlane) -> None:
    def route(context: str, src: str, dst: str) -> object:
        k = int(ipaddress.IPv4Address(src)) << 32 | int(ipaddress.IPv4Address(dst))
        return plane.tables.tables[context].route(k)

    corp, guest = route("corp", "10.1.0.10", "10.1.1.10"), route("guest", "10.1.0.10", "10.1.1.10")
    assert isinstance(corp, ContextEntry) and isinstance(guest, ContextEntry)
    assert (corp.tag, guest.tag) == (1, 3) and corp.out is guest.out  # one SA, two contexts
    assert route("voice", "10.2.0.10", "10.2.1.10") is NO_ROUTE  # not negotiated: no SA in voice
    assert route("corp", "10.1.0.10", "10.2.1.10") is NO_ROUTE  # voice's addresses are not corp's
    plane.ifindex = {"corp": 11, "voice": 12, "guest": 13}
    # each context's remote LANs via its own TUN, in its own table; voice has none
    assert sorted((r.table, r.dst, r.oif) for r in plane.routes()) == [(101, "10.1.1.0/24", 11), (103, "10.1.1.0/24", 13)]


def test_per_network_sa_sits_in_its_context() -> None:
    p = ContextPlane(CONTEXTS, None, offload=False, tx_thread=False, budget=1472)
    s = dataclasses.replace(hsvpn_sa(), trailer=RFC4303, context="voice", local_ts=("10.2.0.0/24",),
                            remote_ts=("10.2.1.0/24",))
    assert p.tables.add(make_entry(s, lambda: 1.0, os.urandom)) == ["voice"]
    assert p.tables.by_spi[s.spi_in][0].context == "voice"


def test_a_nat_rebinding_moves_every_context_of_the_sa(plane: ContextPlane) -> None:
    # RFC 3948: an authenticated packet from a new address and port moves the SA in every context
    # it carries (the entries copy the SA's address), and the engine's IKE handler hears of it
    moved: list[tuple[int, tuple[str, int]]] = []

    class Engine:
        on_peer_moved = staticmethod(lambda spi, addr: moved.append((spi, addr)))

    plane.engine = Engine()
    new = ("198.51.100.11", 61000)
    assert receive(plane, sender(TAGS).encapsulate(ipv4("10.1.1.10", "10.1.0.10"), tag=1), new)
    assert delivered(plane) == {"corp": 60}
    assert {ce.addr for ce in plane.tables.by_spi[0x1001].values()} == {new}
    assert moved == [(0x1001, new)]
    # a forged tag from yet another address moves nothing (dropped before)
    assert receive(plane, sender({2: "voice"}).encapsulate(ipv4("10.2.1.10", "10.2.0.10"), tag=2), ("192.0.2.9", 4500))
    assert {ce.addr for ce in plane.tables.by_spi[0x1001].values()} == {new} and len(moved) == 1


def test_retag_changes_only_what_we_send_in_that_context(plane: ContextPlane) -> None:
    # fault injection (ctl retag): corp's packets to br1 leave with tag 2; guest and inbound keep theirs
    assert plane.retag("br1", "corp", 2) == 1 and plane.retag("br9", "corp", 2) == 0
    k = int(ipaddress.IPv4Address("10.1.0.10")) << 32 | int(ipaddress.IPv4Address("10.1.1.10"))
    corp, guest = plane.tables.tables["corp"].route(k), plane.tables.tables["guest"].route(k)
    assert (corp.tag, guest.tag) == (2, 3)  # type: ignore[union-attr]
    assert set(plane.tables.by_spi[0x1001]) == {1, 3}  # what we accept stays the negotiated map
