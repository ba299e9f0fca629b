"""IKE fragmentation (RFC 7383): encrypted messages cut into Encrypted Fragment (SKF) payloads, and
their reassembly.

Only messages after IKE_SA_INIT are cut, only when both ends announced
IKEV2_FRAGMENTATION_SUPPORTED, and only when the message would not fit `limit` bytes of UDP payload.
Each fragment is encrypted and integrity-protected on its own (its AAD is the IKE header and the
SKF header with Fragment Number and Total Fragments); a fragment is verified before it is kept, so
a forger can neither fill our memory nor poison a reassembly. Reassembly is bounded: at most
MAX_FRAGMENTS fragments and MAX_MESSAGE_BYTES of plaintext per message, one message at a time per
direction, dropped when a fragment of a newer message ID arrives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vpnlab_agent.ike.codec import Header, IntegrityError, Message, SkCipher, encode, encode_chain
from vpnlab_agent.ike.constants import FLAG_INITIATOR, FLAG_RESPONSE, GENERIC_HEADER_LEN, IKE_HEADER_LEN, IKE_VERSION, PayloadType

SKF_HEADER_LEN = GENERIC_HEADER_LEN + 4  # generic header, Fragment Number, Total Fragments
# Bounds of one reassembly. strongSwan's own limit on a whole message is 10000 bytes (max_packet).
MAX_FRAGMENTS = 64
MAX_MESSAGE_BYTES = 20000
# Smallest fragment worth sending: a limit below this is a configuration error, not a message.
MIN_LIMIT = 128

_HDR = struct.Struct("!8s8sBBBBII")
_SKF = struct.Struct("!BBHHH")


@dataclass
class FragmentStats:
    """Endpoint-wide counters (ctl status: `ike_fragments`)."""

    sent: int = 0  # fragments sent (retransmissions included)
    messages_sent: int = 0  # messages that went out in fragments
    received: int = 0  # fragments verified and kept
    reassembled: int = 0  # messages put back together
    invalid: int = 0  # fragments that failed their ICV or were malformed: dropped
    duplicates: int = 0
    over_bounds: int = 0  # fragments or reassemblies refused by MAX_FRAGMENTS / MAX_MESSAGE_BYTES
    abandoned: int = 0  # reassemblies dropped for a newer message or a larger Total Fragments
    unsolicited: int = 0  # fragments from a peer that did not negotiate fragmentation

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def seal(msg: Message, sk: SkCipher, limit: int | None, stats: FragmentStats) -> list[bytes]:
    """The datagrams of one encrypted message: one SK message if it fits `limit` bytes (or `limit`
    is None: the peer did not negotiate fragmentation), else SKF fragments of at most `limit`."""
    inner = encode_chain(msg.payloads)
    if limit is None or IKE_HEADER_LEN + GENERIC_HEADER_LEN + sk.sealed_len(len(inner)) <= limit:
        return [encode(msg, sk)]
    if limit < MIN_LIMIT:
        raise ValueError(f"IKE fragment limit {limit} is below {MIN_LIMIT} bytes")
    room = _chunk_room(sk, limit - IKE_HEADER_LEN - SKF_HEADER_LEN)
    chunks = [inner[i:i + room] for i in range(0, len(inner), room)]
    if len(chunks) > MAX_FRAGMENTS:
        raise ValueError(f"message of {len(inner)} bytes needs {len(chunks)} fragments (at most {MAX_FRAGMENTS})")
    first = msg.payloads[0].payload_type if msg.payloads else PayloadType.NONE
    flags = (FLAG_INITIATOR if msg.initiator else 0) | (FLAG_RESPONSE if msg.response else 0)
    out = []
    for num, chunk in enumerate(chunks, 1):
        body_len = sk.sealed_len(len(chunk))
        total = IKE_HEADER_LEN + SKF_HEADER_LEN + body_len
        aad = _HDR.pack(msg.spi_i, msg.spi_r, PayloadType.SKF, IKE_VERSION, msg.exchange, flags, msg.message_id,
                        total) + _SKF.pack(first if num == 1 else 0, 0, SKF_HEADER_LEN + body_len, num, len(chunks))
        out.append(aad + sk.seal(aad, chunk))
    stats.messages_sent += 1
    return out


def _chunk_room(sk: SkCipher, budget: int) -> int:
    """The most plaintext whose sealed form fits `budget` bytes."""
    n = max(budget - sk.sealed_len(0), 1)
    while n > 1 and sk.sealed_len(n) > budget:
        n -= 1
    return n


@dataclass(frozen=True)
class Fragment:
    number: int
    total: int
    first: int  # Next Payload of fragment 1: the first inner payload's type
    plain: bytes  # verified and decrypted


def open_fragment(data: bytes, hdr: Header, sk: SkCipher) -> Fragment:
    """Parse and verify one SKF datagram. ValueError if malformed, IntegrityError if forged."""
    if hdr.next_payload != PayloadType.SKF or len(data) < IKE_HEADER_LEN + SKF_HEADER_LEN:
        raise ValueError("not an encrypted fragment")
    nxt, _flags, length, number, total = _SKF.unpack_from(data, IKE_HEADER_LEN)
    if IKE_HEADER_LEN + length != len(data):
        raise ValueError("the encrypted fragment payload must be the only payload")
    if not 1 <= number <= total:
        raise ValueError(f"fragment {number} of {total}")
    if number != 1 and nxt != 0:
        raise ValueError("a fragment other than the first names a next payload")
    split = IKE_HEADER_LEN + SKF_HEADER_LEN
    plain = sk.open(data[:split], data[split:])  # IntegrityError before anything is kept
    return Fragment(number, total, nxt, plain)


@dataclass
class _Partial:
    mid: int
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    first: int = PayloadType.NONE


class Reassembler:
    """Fragments of the peer's messages in one direction (its requests, or its responses to ours)."""

    def __init__(self, stats: FragmentStats) -> None:
        self.stats = stats
        self._cur: _Partial | None = None

    @property
    def pending(self) -> int:
        """Plaintext bytes held (0 when no message is being reassembled)."""
        return self._cur.size if self._cur is not None else 0

    def clear(self) -> None:
        self._cur = None

    def add(self, mid: int, frag: Fragment) -> tuple[int, bytes] | None:
        """Keep one verified fragment of message `mid`; returns (first payload type, the message's
        SK plaintext) once every fragment is in, None until then."""
        st = self.stats
        if frag.total > MAX_FRAGMENTS:
            st.over_bounds += 1
            return None
        cur = self._cur
        if cur is not None and (cur.mid != mid or frag.total > cur.total):
            # RFC 7383 §2.6.2: a larger Total Fragments means the sender cut it again smaller
            st.abandoned += 1
            cur = None
        if cur is None:
            cur = self._cur = _Partial(mid, frag.total)
        elif frag.total < cur.total:
            st.invalid += 1  # an older cut of the same message: dropped (§2.6.2)
            return None
        if frag.number in cur.parts:
            st.duplicates += 1
            return None
        if cur.size + len(frag.plain) > MAX_MESSAGE_BYTES:
            st.over_bounds += 1
            self._cur = None
            return None
        cur.parts[frag.number] = frag.plain
        cur.size += len(frag.plain)
        st.received += 1
        if frag.number == 1:
            cur.first = frag.first
        if len(cur.parts) < cur.total:
            return None
        self._cur = None
        st.reassembled += 1
        return cur.first, b"".join(cur.parts[i] for i in range(1, cur.total + 1))


def verify_only(data: bytes, hdr: Header, sk: SkCipher) -> Fragment | None:
    """A fragment of a retransmitted request, checked but not kept; None if it does not verify."""
    try:
        return open_fragment(data, hdr, sk)
    except (ValueError, IntegrityError):
        return None
