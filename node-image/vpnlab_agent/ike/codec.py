"""IKEv2 wire codec (RFC 7296 §3): messages <-> bytes, plain or inside the SK encrypted payload.

Sans-I/O and strict: `decode` accepts arbitrary bytes and either returns a Message or raises
ParseError (carrying the Notify type the RFC wants in an answer) or IntegrityError (bad ICV: the
RFC says drop silently). Nothing else escapes it.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Protocol

from vpnlab_agent.ike.constants import (
    ATTR_FORMAT_TV,
    ATTR_KEY_LENGTH,
    CRITICAL,
    FLAG_INITIATOR,
    FLAG_RESPONSE,
    GENERIC_HEADER_LEN,
    IKE_HEADER_LEN,
    IKE_VERSION,
    NotifyType,
    PayloadType,
    TsType,
)
from vpnlab_agent.ike.errors import CodecError, IntegrityError, ParseError  # noqa: F401 - re-exported
from vpnlab_agent.ike.payloads import (  # noqa: F401 - re-exported: the codec's callers use them from here
    Auth,
    Cert,
    CertReq,
    Delete,
    Header,
    IDi,
    IDr,
    KE,
    Message,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SA,
    TrafficSelector,
    Transform,
    ts_from_cidr,
    ts_to_cidrs,
    TSi,
    TSr,
    UnknownPayload,
    VendorId,
)


class SkCipher(Protocol):
    """What the codec needs of the SK payload's cipher (ike.crypto.SkCipher implements it)."""

    def sealed_len(self, inner_len: int) -> int: ...

    def seal(self, aad: bytes, inner: bytes) -> bytes: ...

    def open(self, aad: bytes, body: bytes) -> bytes: ...


# --- encoding ----------------------------------------------------------------------------------

_HDR = struct.Struct("!8s8sBBBBII")
_GEN = struct.Struct("!BBH")
_H = struct.Struct("!H")


def _enc_transform(t: Transform, last: bool) -> bytes:
    attrs = b""
    if t.key_length is not None:
        attrs = struct.pack("!HH", ATTR_FORMAT_TV | ATTR_KEY_LENGTH, t.key_length)
    attrs += t.other_attrs
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), t.type, 0, t.id) + attrs


def _enc_proposal(p: Proposal, last: bool) -> bytes:
    n = len(p.transforms)
    body = b"".join(_enc_transform(t, i == n - 1) for i, t in enumerate(p.transforms))
    head = struct.pack(
        "!BBHBBBB", 0 if last else 2, 0, 8 + len(p.spi) + len(body), p.num, p.protocol, len(p.spi), n
    )
    return head + p.spi + body


def _enc_ts(ts: TrafficSelector) -> bytes:
    start = ipaddress.ip_address(ts.start).packed
    end = ipaddress.ip_address(ts.end).packed
    if len(start) != len(end):
        raise ValueError(f"traffic selector {ts.start}-{ts.end} mixes IPv4 and IPv6")
    ts_type = TsType.IPV4_ADDR_RANGE if len(start) == 4 else TsType.IPV6_ADDR_RANGE
    length = 8 + 2 * len(start)
    return struct.pack("!BBHHH", ts_type, ts.ip_proto, length, ts.start_port, ts.end_port) + start + end


def payload_body(p: Payload) -> bytes:
    """The payload's body, i.e. without the 4-byte generic header. Public because the AUTH
    computation signs the ID payload body (RFC 7296 §2.15)."""
    t = type(p)
    if t is Nonce or t is VendorId:
        return p.data
    if t is Notify:
        return struct.pack("!BBH", p.protocol, len(p.spi), p.notify_type) + p.spi + p.data
    if t is KE:
        return struct.pack("!HH", p.group, 0) + p.data
    if t is IDi or t is IDr:
        return struct.pack("!B3x", p.id_type) + p.data
    if t is Auth:
        return struct.pack("!B3x", p.method) + p.data
    if t is Cert or t is CertReq:
        return bytes((p.encoding,)) + p.data
    if t is SA:
        n = len(p.proposals)
        return b"".join(_enc_proposal(pr, i == n - 1) for i, pr in enumerate(p.proposals))
    if t is TSi or t is TSr:
        return struct.pack("!B3x", len(p.selectors)) + b"".join(_enc_ts(s) for s in p.selectors)
    if t is Delete:
        spi_size = len(p.spis[0]) if p.spis else 0
        if any(len(s) != spi_size for s in p.spis):
            raise ValueError("Delete: all SPIs must have the same size")
        return struct.pack("!BBH", p.protocol, spi_size, len(p.spis)) + b"".join(p.spis)
    if t is UnknownPayload:
        return p.body
    raise TypeError(f"not an IKE payload: {p!r}")


def _type_of(p: Payload) -> int:
    return p.payload_type


def encode_chain(payloads: list) -> bytes:
    """Payloads with generic headers, each header naming the type of the payload after it (the
    SK payload's plaintext; fragment.py cuts it into RFC 7383 fragments)."""
    parts = []
    n = len(payloads)
    for i, p in enumerate(payloads):
        body = payload_body(p)
        nxt = _type_of(payloads[i + 1]) if i + 1 < n else PayloadType.NONE
        flags = CRITICAL if type(p) is UnknownPayload and p.critical else 0
        if len(body) + GENERIC_HEADER_LEN > 0xFFFF:
            raise ValueError(f"payload {_type_of(p)} too long")
        parts.append(_GEN.pack(nxt, flags, len(body) + GENERIC_HEADER_LEN))
        parts.append(body)
    return b"".join(parts)


def _flags(msg: Message) -> int:
    return (FLAG_INITIATOR if msg.initiator else 0) | (FLAG_RESPONSE if msg.response else 0)


def encode(msg: Message, sk: SkCipher | None = None) -> bytes:
    """The message's bytes. With `sk`, all payloads go inside one SK payload (RFC 7296 §3.14)."""
    if len(msg.spi_i) != 8 or len(msg.spi_r) != 8:
        raise ValueError("IKE SPIs must be 8 bytes")
    first = _type_of(msg.payloads[0]) if msg.payloads else PayloadType.NONE
    inner = encode_chain(msg.payloads)
    if sk is None:
        return _HDR.pack(
            msg.spi_i, msg.spi_r, first, IKE_VERSION, msg.exchange, _flags(msg), msg.message_id,
            IKE_HEADER_LEN + len(inner),
        ) + inner
    body_len = sk.sealed_len(len(inner))
    total = IKE_HEADER_LEN + GENERIC_HEADER_LEN + body_len
    aad = _HDR.pack(
        msg.spi_i, msg.spi_r, PayloadType.SK, IKE_VERSION, msg.exchange, _flags(msg), msg.message_id, total
    ) + _GEN.pack(first, 0, GENERIC_HEADER_LEN + body_len)
    return aad + sk.seal(aad, inner)


# --- decoding ----------------------------------------------------------------------------------


def _syntax(msg: str) -> ParseError:
    return ParseError(NotifyType.INVALID_SYNTAX, msg)


def decode_header(data: bytes) -> Header:
    if len(data) < IKE_HEADER_LEN:
        raise _syntax(f"message of {len(data)} bytes is shorter than the IKE header")
    spi_i, spi_r, nxt, version, exchange, flags, message_id, length = _HDR.unpack_from(data)
    if version >> 4 != 2:
        raise ParseError(
            NotifyType.INVALID_MAJOR_VERSION, f"IKE major version {version >> 4}", bytes([IKE_VERSION])
        )
    if length != len(data):
        raise _syntax(f"header length {length} but datagram is {len(data)} bytes")
    return Header(spi_i, spi_r, nxt, exchange, flags, message_id, length)


def _dec_transforms(buf: bytes, off: int, end: int, count: int) -> list[Transform]:
    out: list[Transform] = []
    for i in range(count):
        if end - off < 8:
            raise _syntax("truncated transform")
        more, _, length, ttype, _, tid = struct.unpack_from("!BBHBBH", buf, off)
        if length < 8 or off + length > end:
            raise _syntax(f"transform length {length} out of bounds")
        last = i == count - 1
        if more != (0 if last else 3):
            raise _syntax("transform 'last' flag disagrees with the transform count")
        key_length = None
        other = bytearray()
        a, a_end = off + 8, off + length
        while a < a_end:
            if a_end - a < 4:
                raise _syntax("truncated transform attribute")
            atype, aval = struct.unpack_from("!HH", buf, a)
            if atype & ATTR_FORMAT_TV:
                if atype & 0x7FFF == ATTR_KEY_LENGTH and key_length is None:
                    key_length = aval
                else:
                    other += buf[a : a + 4]
                a += 4
            else:  # TLV: aval is the value length
                if a + 4 + aval > a_end:
                    raise _syntax("transform attribute length out of bounds")
                other += buf[a : a + 4 + aval]
                a += 4 + aval
        out.append(Transform(ttype, tid, key_length, bytes(other)))
        off += length
    if off != end:
        raise _syntax("proposal length disagrees with its transforms")
    return out


def _dec_sa(body: bytes) -> SA:
    proposals: list[Proposal] = []
    off, end = 0, len(body)
    if end == 0:
        raise _syntax("SA payload without proposals")
    while off < end:
        if end - off < 8:
            raise _syntax("truncated proposal")
        more, _, length, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", body, off)
        if length < 8 + spi_size or off + length > end:
            raise _syntax(f"proposal length {length} out of bounds")
        if more not in (0, 2) or (more == 0) != (off + length == end):
            raise _syntax("proposal 'last' flag disagrees with the SA payload length")
        spi = body[off + 8 : off + 8 + spi_size]
        transforms = _dec_transforms(body, off + 8 + spi_size, off + length, ntrans)
        proposals.append(Proposal(num, proto, spi, transforms))
        off += length
    return SA(proposals)


def _dec_ts(body: bytes, cls: type) -> TSi | TSr:
    if len(body) < 4:
        raise _syntax("truncated traffic selector payload")
    count = body[0]
    off, sels = 4, []
    for _ in range(count):
        if len(body) - off < 8:
            raise _syntax("truncated traffic selector")
        ts_type, proto, length, sport, eport = struct.unpack_from("!BBHHH", body, off)
        if ts_type == TsType.IPV4_ADDR_RANGE:
            alen = 4
        elif ts_type == TsType.IPV6_ADDR_RANGE:
            alen = 16
        else:
            raise _syntax(f"unsupported traffic selector type {ts_type}")
        if length != 8 + 2 * alen or off + length > len(body):
            raise _syntax(f"traffic selector length {length} invalid")
        a = off + 8
        start = ipaddress.ip_address(body[a : a + alen])
        end = ipaddress.ip_address(body[a + alen : a + 2 * alen])
        sels.append(TrafficSelector(str(start), str(end), proto, sport, eport))
        off += length
    if off != len(body):
        raise _syntax("traffic selector payload length disagrees with its selectors")
    return cls(sels)


def _dec_body(ptype: int, critical: bool, body: bytes) -> Payload:
    n = len(body)
    if ptype == PayloadType.NONCE:
        return Nonce(body)
    if ptype == PayloadType.NOTIFY:
        if n < 4 or n < 4 + body[1]:
            raise _syntax("truncated notify payload")
        proto, spi_size, ntype = struct.unpack_from("!BBH", body)
        nt = NotifyType._value2member_map_.get(ntype, ntype)
        return Notify(proto, body[4 : 4 + spi_size], nt, body[4 + spi_size :])
    if ptype == PayloadType.KE:
        if n < 4:
            raise _syntax("truncated KE payload")
        return KE(_H.unpack_from(body)[0], body[4:])
    if ptype == PayloadType.IDi or ptype == PayloadType.IDr or ptype == PayloadType.AUTH:
        if n < 4:
            raise _syntax("truncated ID/AUTH payload")
        cls = IDi if ptype == PayloadType.IDi else IDr if ptype == PayloadType.IDr else Auth
        return cls(body[0], body[4:])
    if ptype == PayloadType.CERT or ptype == PayloadType.CERTREQ:
        if n < 1:
            raise _syntax("empty CERT/CERTREQ payload")
        return (Cert if ptype == PayloadType.CERT else CertReq)(body[0], body[1:])
    if ptype == PayloadType.SA:
        return _dec_sa(body)
    if ptype == PayloadType.TSi:
        return _dec_ts(body, TSi)
    if ptype == PayloadType.TSr:
        return _dec_ts(body, TSr)
    if ptype == PayloadType.DELETE:
        if n < 4:
            raise _syntax("truncated delete payload")
        proto, spi_size, count = struct.unpack_from("!BBH", body)
        if n != 4 + spi_size * count:
            raise _syntax("delete payload length disagrees with its SPI count")
        return Delete(proto, [body[4 + i * spi_size : 4 + (i + 1) * spi_size] for i in range(count)])
    if ptype == PayloadType.VENDOR_ID:
        return VendorId(body)
    if critical and ptype not in PayloadType._value2member_map_:
        raise ParseError(
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, f"unknown critical payload type {ptype}", bytes([ptype])
        )
    return UnknownPayload(ptype, critical, body)


def _dec_chain(buf: bytes, off: int, end: int, nxt: int, out: list) -> tuple[int, int, int]:
    """Parse payloads from `off` until next-payload NONE or SK. Returns (offset, SK header offset or
    -1, SK's next-payload)."""
    while nxt != PayloadType.NONE:
        if end - off < GENERIC_HEADER_LEN:
            raise _syntax("truncated payload header")
        this, (nxt_next, flags, length) = nxt, _GEN.unpack_from(buf, off)
        if length < GENERIC_HEADER_LEN or off + length > end:
            raise _syntax(f"payload length {length} out of bounds")
        if this == PayloadType.SK:
            return off, off, nxt_next
        out.append(_dec_body(this, bool(flags & CRITICAL), buf[off + GENERIC_HEADER_LEN : off + length]))
        off += length
        nxt = nxt_next
    if off != end:
        raise _syntax(f"{end - off} trailing bytes after the last payload")
    return off, -1, PayloadType.NONE


def decode_inner(h: Header, inner: bytes, first: int) -> Message:
    """The message whose SK plaintext is `inner` (first payload type `first`): a reassembled RFC 7383
    message. Its fragments were each authenticated, so a ParseError here is authentic."""
    payloads: list = []
    try:
        if _dec_chain(inner, 0, len(inner), first, payloads)[1] >= 0:
            raise _syntax("encrypted payload inside the encrypted payload")
    except ParseError as e:
        e.authentic = True
        raise
    except Exception as e:  # noqa: BLE001 - the contract: only codec errors escape
        err = _syntax(f"malformed message ({type(e).__name__}: {e})")
        err.authentic = True
        raise err from e
    return Message(h.spi_i, h.spi_r, h.exchange, h.message_id, h.initiator, h.response, payloads)


def decode(data: bytes, sk: SkCipher | None = None) -> Message:
    """Parse one IKE message. With `sk` the message must carry an SK payload, whose ICV is
    verified before anything inside it is parsed."""
    try:
        return _decode(bytes(data), sk)
    except CodecError:
        raise
    except Exception as e:  # noqa: BLE001 - the contract: only codec errors escape decode
        raise _syntax(f"malformed message ({type(e).__name__}: {e})") from e


def _decode(data: bytes, sk: SkCipher | None) -> Message:
    h = decode_header(data)
    payloads: list = []
    _, sk_off, sk_next = _dec_chain(data, IKE_HEADER_LEN, h.length, h.next_payload, payloads)
    if sk is None:
        if sk_off >= 0:
            raise _syntax("encrypted payload but no keys for this IKE SA")
    else:
        if sk_off != IKE_HEADER_LEN:
            raise _syntax("expected only an encrypted payload")
        sk_len = _GEN.unpack_from(data, sk_off)[2]
        if sk_off + sk_len != h.length:
            raise _syntax("encrypted payload must be the last payload")
        body_off = sk_off + GENERIC_HEADER_LEN
        inner = sk.open(data[:body_off], data[body_off:])
        try:
            if _dec_chain(inner, 0, len(inner), sk_next, payloads)[1] >= 0:
                raise _syntax("encrypted payload inside the encrypted payload")
        except ParseError as e:
            e.authentic = True
            raise
    return Message(h.spi_i, h.spi_r, h.exchange, h.message_id, h.initiator, h.response, payloads)
