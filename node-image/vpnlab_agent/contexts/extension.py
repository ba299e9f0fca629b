"""HSVPN in IKE: the tag map negotiated per tunnel, and each child SA's context (docs/hsvpn.md).

`HsvpnExtension` (method hsvpn). Announces the Vendor ID `VENDOR_ID`. The initiator of a child SA
(IKE_AUTH, CREATE_CHILD_SA) proposes, in an HSVPN_TAGS notify inside the encrypted exchange, the
contexts it would carry to that peer with a tag for each; the responder answers with the part it
carries too (same names, same tags). The answer is the tunnel's tag map: both sides build the child
SA with `HsvpnTrailer(map)`. No answer (a peer without the Vendor ID, or no context in common) means
a plain RFC 4303 SA: such a peer never gets a tagged packet. A rekey negotiates the map again.

`ContextOfPeer` (method per-network): the child SAs of the per-context peers ("<peer>.<context>")
belong to that context; both sides know it from their configuration, so nothing is negotiated.
The context's table number is the SA's XFRM mark: the mark the contexts service puts on every
packet entering the context, which tells the contexts' SAs apart in the kernel (xfrm_specs.py).

Sans-I/O like every extension: payloads in, payloads and ChildMeta out.
"""

from __future__ import annotations

import logging
import struct

from vpnlab_agent.contexts.config import ContextsConfig
from vpnlab_agent.contexts.trailer import HsvpnTrailer
from vpnlab_agent.ike.codec import Notify, Payload
from vpnlab_agent.ike.constants import ExchangeType, NotifyType
from vpnlab_agent.ike.extension import ChildInfo, ChildMeta, Extension, MessageInfo, SaView

log = logging.getLogger(__name__)

VENDOR_ID = b"vpnlab-hsvpn/1"
HSVPN_TAGS = int(NotifyType.VPNLAB_PRIVATE_BASE) + 16  # the mesh uses BASE + 1..4
VERSION = 1
MAX_ENTRIES = 255
_CHILD_EXCHANGES = (ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA)


def encode_map(tags: dict[int, str]) -> bytes:
    """version (1) | count (1) | per entry: tag (2) | name length (1) | name (ASCII)."""
    out = bytearray((VERSION, len(tags)))
    for tag, name in sorted(tags.items()):
        raw = name.encode("ascii")
        out += struct.pack("!HB", tag, len(raw)) + raw
    return bytes(out)


def decode_map(data: bytes) -> dict[int, str]:
    """ValueError for anything but a well-formed map of distinct tags and names."""
    if len(data) < 2 or data[0] != VERSION:
        raise ValueError("HSVPN tag map: unknown version or too short")
    count, pos, out = data[1], 2, {}
    for _ in range(count):
        if pos + 3 > len(data):
            raise ValueError("HSVPN tag map: truncated")
        tag, n = struct.unpack_from("!HB", data, pos)
        name = data[pos + 3:pos + 3 + n].decode("ascii", errors="strict")
        if len(name) != n or not name or tag == 0 or tag in out or name in out.values():
            raise ValueError("HSVPN tag map: bad entry")
        out[tag] = name
        pos += 3 + n
    if pos != len(data):
        raise ValueError("HSVPN tag map: trailing bytes")
    return out


def _map_in(payloads: tuple[Payload, ...] | list[Payload]) -> dict[int, str] | None:
    for p in payloads:
        if isinstance(p, Notify) and p.notify_type == HSVPN_TAGS:
            try:
                return decode_map(p.data)
            except (ValueError, UnicodeDecodeError) as e:
                log.warning("hsvpn: ignoring a malformed tag map: %s", e)
                return None
    return None


class HsvpnExtension(Extension):
    name = "hsvpn"
    vendor_ids = (VENDOR_ID,)

    def __init__(self, contexts: ContextsConfig) -> None:
        # peer -> {context: tag} that we would carry to it
        self.offer: dict[str, dict[str, int]] = {}
        numbers = {c.name: c.number for c in contexts.contexts}
        self.every = numbers
        for r in contexts.reach:
            self.offer.setdefault(r.peer, {})[r.context] = numbers[r.context]
        self._proposed: dict[bytes, dict[int, str]] = {}  # IKE SA (local SPI) -> the peer's last proposal
        self.negotiated: dict[str, dict[int, str]] = {}  # peer -> map of its newest child SA (status)

    def _ours(self, peer: str | None) -> dict[int, str]:
        offer = self.offer.get(peer or "")
        if offer is None and peer and getattr(self, "api", None) is not None and self.api.is_dynamic(peer):
            offer = self.every  # a mesh shortcut carries every context (docs/hsvpn.md)
        return {tag: name for name, tag in (offer or {}).items()}

    def _accept(self, peer: str | None, proposal: dict[int, str]) -> dict[int, str]:
        ours = self._ours(peer)
        return {t: n for t, n in proposal.items() if ours.get(t) == n}

    def payloads(self, sa: SaView, msg: MessageInfo) -> list[Payload]:
        if msg.exchange not in _CHILD_EXCHANGES or msg.child is None or not self._ours(sa.peer):
            return []
        if not msg.response:
            # IKE_AUTH: the peer's Vendor IDs are not authenticated yet; the notify is encrypted and
            # a peer without HSVPN ignores a private status notify (RFC 7296 3.10.1).
            if msg.exchange == ExchangeType.CREATE_CHILD_SA and VENDOR_ID not in sa.vendor_ids:
                return []
            return [Notify(0, b"", HSVPN_TAGS, encode_map(self._ours(sa.peer)))]
        proposal = self._proposed.get(sa.local_spi)
        if proposal is None or VENDOR_ID not in sa.vendor_ids:
            return []
        accepted = self._accept(sa.peer, proposal)
        return [Notify(0, b"", HSVPN_TAGS, encode_map(accepted))] if accepted else []

    def received(self, sa: SaView, msg: MessageInfo, payloads: list[Payload], now: float) -> None:
        if msg.exchange in _CHILD_EXCHANGES and not msg.response:
            proposal = _map_in(payloads)
            if proposal is not None:
                self._proposed[sa.local_spi] = proposal
            else:
                self._proposed.pop(sa.local_spi, None)

    def ike_closed(self, sa: SaView, now: float) -> None:
        self._proposed.pop(sa.local_spi, None)  # else one entry per IKE SA ever (each IKE rekey)

    def child_meta(self, sa: SaView, child: ChildInfo) -> ChildMeta | None:
        if not self._ours(sa.peer) or VENDOR_ID not in sa.vendor_ids:
            return None
        got = _map_in(child.peer_payloads)
        if got is None:
            return ChildMeta(trailer=_plain()) if child.rekey_of is not None else None
        # The same rule on both sides: the initiator reads the answer (only what it offered counts,
        # so an answer cannot add a tag), the responder its own answer to the proposal.
        tags = self._accept(sa.peer, got)
        if not tags:
            return ChildMeta(trailer=_plain()) if child.rekey_of is not None else None
        if sa.peer:
            self.negotiated[sa.peer] = tags
        return ChildMeta(trailer=HsvpnTrailer(tags))

    def status(self) -> dict[str, dict[str, str]]:
        return {peer: {str(t): n for t, n in m.items()} for peer, m in self.negotiated.items()}


def _plain() -> object:
    from vpnlab_agent.esp.trailer import RFC4303

    return RFC4303


class ContextOfPeer(Extension):
    """per-network: the child SAs of peer "<peer>.<context>" belong to that context."""

    name = "contexts"

    def __init__(self, contexts: ContextsConfig) -> None:
        tables = {c.name: c.table for c in contexts.contexts}
        self.context_of = {r.peer: (r.context, tables[r.context]) for r in contexts.reach}

    def child_meta(self, sa: SaView, child: ChildInfo) -> ChildMeta | None:
        found = self.context_of.get(sa.peer or "")
        if found is None:
            return None
        name, table = found
        return ChildMeta(context=name, mark=table)
