"""IKE_SA_INIT and IKE_AUTH (RFC 7296 §1.2, §2.15, §2.23), initiator and responder.

The endpoint has already admitted a responder's IKE_SA_INIT (cookies, extensions' policies,
proposal and KE group). Extensions get their say here: extra payloads in each message, the RFC 5685
notifies of IKE_SA_INIT, the authenticated payloads of IKE_AUTH, and `admit_auth` before the
responder's IKE SA comes up.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import Any

from vpnlab_agent.config import PeerConfig
from vpnlab_agent.ike import certs, children, crypto, proposals
from vpnlab_agent.ike.codec import (
    KE,
    SA,
    TSi,
    TSr,
    Auth,
    Cert,
    CertReq,
    IDi,
    IDr,
    IntegrityError,
    Message,
    Nonce,
    Notify,
    ParseError,
    Proposal,
    decode,
    encode,
    payload_body,
)
from vpnlab_agent.ike.constants import AuthMethod, CertEncoding, ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.extension import ChildInfo, MessageInfo
from vpnlab_agent.ike.ikesa import (
    HOLD_AUTH_S,
    MAX_INIT_RETRIES,
    NONCE_LEN,
    REKEYED_GRACE,
    ZERO_SPI,
    ChildCtx,
    IkeSa,
    ProtocolFailure,
    State,
    error_notifies,
    notify_name,
)
from vpnlab_agent.ike.policy import cidrs, identity, identity_text, selectors_for, with_spi
from vpnlab_agent.ike.proposals import dh_group, without_dh
from vpnlab_agent.ike.window import Request, RequestKind

INIT = ExchangeType.IKE_SA_INIT
AUTH = ExchangeType.IKE_AUTH


def offer(msg: Message) -> tuple[Any, Any, Any]:
    """What an IKE_SA_INIT request offers: its SA, KE and Nonce payloads."""
    return msg.find(SA), msg.find(KE), msg.find(Nonce)


# --- initiator: IKE_SA_INIT -----------------------------------------------------------------


def start(sa: IkeSa, now: float) -> None:
    ours = sa.host.ike_proposals
    sa.ni = sa.host.rng(NONCE_LEN)
    sa.dh = crypto.DhKeyPair.generate(dh_group(ours[0]), sa.host.rng)
    send_init(sa, now)


def send_init(sa: IkeSa, now: float) -> None:
    payloads: list = []
    if sa.cookie is not None:
        payloads.append(Notify(ProtocolId.NONE, b"", NotifyType.COOKIE, sa.cookie))
    payloads += [
        SA(with_spi(sa.host.ike_proposals, b"")),
        KE(sa.dh.group, sa.dh.public_bytes),
        Nonce(sa.ni),
        *nat_notifies(sa, sa.spi_i, ZERO_SPI),
        *signature_hashes(sa),
        *fragmentation_supported(sa, True),
        *sa.init_extra,
        *sa.host.extensions.payloads(sa.view(), MessageInfo(INIT, False)),
        *sa.our_vendor_ids(),
    ]
    sa.init_req = encode(sa.msg(INIT, 0, False, payloads))
    sa.window.my_mid = 1
    sa.set_state(State.INIT_SENT)
    sa.window.transmit(Request(INIT, payloads, lambda m, t: on_init_response(sa, m, t), RequestKind.INIT,
                               mid=0, data=sa.init_req), now)


def nat_notifies(sa: IkeSa, spi_i: bytes, spi_r: bytes) -> list[Notify]:
    if sa.host.force_encap:
        # Like strongSwan's encap=yes: a source hash that cannot match makes both ends believe
        # we are behind a NAT, so IKE floats to 4500 and ESP is UDP-encapsulated.
        src = sa.host.rng(20)
    else:
        src = crypto.nat_hash(spi_i, spi_r, sa.host.local_addr, sa.local_port)
    dst = crypto.nat_hash(spi_i, spi_r, sa.remote[0], sa.remote[1])
    return [
        Notify(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_SOURCE_IP, src),
        Notify(ProtocolId.NONE, b"", NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
    ]


def signature_hashes(sa: IkeSa) -> list[Notify]:
    """RFC 7427 §4: announce the hashes we verify signatures with, so that a peer with
    certificates (strongSwan by default) authenticates with method 14."""
    if sa.host.credentials is None:
        return []
    data = b"".join(h.to_bytes(2, "big") for h in certs.SIGNATURE_HASHES)
    return [Notify(ProtocolId.NONE, b"", NotifyType.SIGNATURE_HASH_ALGORITHMS, data)]


def fragmentation_supported(sa: IkeSa, peer_may: bool) -> list[Notify]:
    """RFC 7383 §2.3: announced in IKE_SA_INIT; a responder answers it only to an initiator that did."""
    if not sa.host.config.fragmentation or not peer_may:
        return []
    return [Notify(ProtocolId.NONE, b"", NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)]


def check_nat(sa: IkeSa, msg: Message, addr: tuple[str, int], local_port: int) -> None:
    srcs = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_SOURCE_IP)]
    dsts = [n.data for n in msg.notifies(NotifyType.NAT_DETECTION_DESTINATION_IP)]
    if srcs:
        want = crypto.nat_hash(msg.spi_i, msg.spi_r, addr[0], addr[1])
        sa.nat_remote = not any(hmac.compare_digest(want, s) for s in srcs)
    if dsts:
        want = crypto.nat_hash(msg.spi_i, msg.spi_r, sa.host.local_addr, local_port)
        sa.nat_local = not any(hmac.compare_digest(want, d) for d in dsts)
    sa.encap = sa.nat_local or sa.nat_remote or sa.host.force_encap


def stale_init_answer(sa: IkeSa, msg: Message) -> bool:
    """A late answer to an earlier version of our IKE_SA_INIT request: a COOKIE we already
    carry, or INVALID_KE_PAYLOAD naming the group we already switched to. Acting on it would
    restart (or, past the retry bound, close) a negotiation that is going fine."""
    cookie = msg.notifies(NotifyType.COOKIE)
    if cookie and sa.cookie is not None and cookie[0].data == sa.cookie:
        return True
    bad_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
    return bool(bad_ke) and sa.init_retries > 0 and bad_ke[0].data == sa.dh.group.to_bytes(2, "big")


def on_init_response(sa: IkeSa, msg: Message, now: float) -> None:
    # RFC 5685: an extension may follow a REDIRECT here (it closes this SA through the API).
    sa.host.extensions.received(sa.view(), MessageInfo(INIT, True), msg.payloads, now)
    if sa.state != State.INIT_SENT:
        return
    cookie = msg.notifies(NotifyType.COOKIE)
    if cookie and sa.init_retries < MAX_INIT_RETRIES:
        sa.init_retries += 1
        sa.cookie = cookie[0].data
        send_init(sa, now)
        return
    bad_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
    if bad_ke and sa.init_retries < MAX_INIT_RETRIES and len(bad_ke[0].data) == 2:
        group = int.from_bytes(bad_ke[0].data, "big")
        offered = {dh_group(p) for p in sa.host.ike_proposals}
        if group in offered and group != sa.dh.group:
            sa.init_retries += 1
            sa.dh = crypto.DhKeyPair.generate(group, sa.host.rng)
            send_init(sa, now)
            return
    errors = error_notifies(msg)
    if errors:
        sa.close(now, f"IKE_SA_INIT refused: {notify_name(errors[0].notify_type)}")
        return
    sa_p, ke, nonce = msg.find(SA), msg.find(KE), msg.find(Nonce)
    if sa_p is None or ke is None or nonce is None or len(sa_p.proposals) != 1:
        sa.close(now, "IKE_SA_INIT response lacks SA, KE or Nonce")
        return
    chosen = sa_p.proposals[0]
    if proposals.select([chosen], sa.host.ike_proposals) is None:
        sa.close(now, "IKE_SA_INIT response chose a proposal we did not offer")
        return
    if ke.group != sa.dh.group or dh_group(chosen) != sa.dh.group:
        sa.close(now, "IKE_SA_INIT response KE group does not match")
        return
    if not 16 <= len(nonce.data) <= 256 or msg.spi_r == ZERO_SPI:
        sa.close(now, "IKE_SA_INIT response has a bad nonce or SPI")
        return
    try:
        shared = sa.dh.shared_secret(ke.data)
    except ValueError as e:
        sa.close(now, f"bad peer DH value: {e}")
        return
    sa.spi_r = msg.spi_r
    sa.nr = nonce.data
    sa.init_resp = sa.last_raw
    sa.set_keys(chosen, shared)
    sa.peer_notifies |= {n.notify_type for n in msg.find_all(Notify) if n.notify_type >= 16384}
    check_nat(sa, msg, sa.remote, sa.local_port)
    sa.float_to_natt()
    send_auth(sa, now)


# --- authentication: PSK (RFC 7296 §2.15) or signatures with certificates (RFC 7427) ---------


def peer_psk(sa: IkeSa, peer: PeerConfig) -> bytes:
    """The key of the tunnel with `peer`: its own, else the endpoint's (the lab-wide one, which
    mesh shortcuts use). The responder picks it by the IDi it received, so a branch that knows
    only its own key can authenticate only as itself."""
    return (peer.psk if peer.psk is not None else sa.host.config.psk).encode()


def signed_octets(sa: IkeSa, signer_is_initiator: bool, id_payload: IDi | IDr, init_req: bytes | None = None) -> bytes:
    """What AUTH covers: the IKE SA initiator's IKE_SA_INIT request, Nr and prf(SK_pi, IDi body);
    for the responder its IKE_SA_INIT response, Ni and prf(SK_pr, IDr body)."""
    k, prf = sa.keys, sa.suite.prf
    if signer_is_initiator:
        return crypto.signed_octets(init_req or sa.init_req, sa.nr, prf, k.sk_pi, payload_body(id_payload))
    return crypto.signed_octets(sa.init_resp, sa.ni, prf, k.sk_pr, payload_body(id_payload))


def auth_data(sa: IkeSa, signer_is_initiator: bool, id_payload: IDi | IDr, psk: bytes,
              init_req: bytes | None = None) -> bytes:
    """PSK AUTH data: prf(prf(PSK, "Key Pad for IKEv2"), signed octets)."""
    return crypto.psk_auth(sa.suite.prf, psk, signed_octets(sa, signer_is_initiator, id_payload, init_req))


def our_auth(sa: IkeSa, peer: PeerConfig, id_payload: IDi | IDr) -> list:
    """CERT and AUTH (digital signature) with auth: cert, else AUTH (PSK)."""
    if sa.host.config.auth != "cert":
        return [Auth(AuthMethod.PSK, auth_data(sa, sa.initiator, id_payload, peer_psk(sa, peer)))]
    creds = sa.host.credentials
    assert creds is not None and creds.cert is not None  # the endpoint checks at start
    octets = signed_octets(sa, sa.initiator, id_payload)
    return [Cert(CertEncoding.X509_SIGNATURE, creds.cert_der), Auth(AuthMethod.DIGITAL_SIGNATURE, certs.sign(creds, octets))]


def cert_request(sa: IkeSa) -> list:
    creds = sa.host.credentials
    return [CertReq(CertEncoding.X509_SIGNATURE, creds.ca_hash())] if creds is not None else []


def check_peer_auth(sa: IkeSa, peer: PeerConfig, msg: Message, id_payload: IDi | IDr, auth: Auth,
                    init_reqs: tuple[bytes | None, ...] = (None,)) -> str | None:
    """None when the peer's AUTH proves `peer`'s identity, else why not (the log line)."""
    signer_is_initiator = isinstance(id_payload, IDi)
    if peer.auth != "cert":
        psk = peer_psk(sa, peer)
        if auth.method == AuthMethod.PSK and any(
                hmac.compare_digest(auth.data, auth_data(sa, signer_is_initiator, id_payload, psk, m)) for m in init_reqs):
            return None
        return "PSK mismatch" if auth.method == AuthMethod.PSK else f"AUTH method {auth.method}, expected PSK"
    creds = sa.host.credentials
    if auth.method != AuthMethod.DIGITAL_SIGNATURE:
        return f"AUTH method {auth.method}, expected a digital signature (RFC 7427)"
    cert = next((c for c in msg.find_all(Cert) if c.encoding == CertEncoding.X509_SIGNATURE), None)
    if creds is None or cert is None:
        return "no certificate" if cert is None else "no lab CA to check certificates with"
    try:
        x509_cert = certs.check_certificate(creds, cert.data, id_payload.id_type, id_payload.data, peer.name,
                                            sa.host.wall_clock())
        for m in init_reqs:
            try:
                certs.verify_signature(x509_cert, auth.data, signed_octets(sa, signer_is_initiator, id_payload, m))
                return None
            except certs.CertError as e:
                last = e
        raise last
    except certs.CertError as e:
        return str(e)


# --- initiator: IKE_AUTH --------------------------------------------------------------------


def send_auth(sa: IkeSa, now: float) -> None:
    assert sa.peer is not None
    id_type, id_data = identity(sa.peer.local_id or sa.host.config.local_id)  # per-peer: per-network contexts
    idi = IDi(id_type, id_data)
    spi = sa.offer_spi()
    ts_i, ts_r = selectors_for(sa.peer.local_ts), selectors_for(sa.peer.remote_ts)
    sa.auth_ctx = ChildCtx(nonce=b"", spi=spi, dh=None, offered_ts=(ts_i, ts_r))
    auth = our_auth(sa, sa.peer, idi)
    payloads: list = [idi, *auth[:-1]]  # IDi, [CERT], [N(INITIAL_CONTACT)], [CERTREQ], AUTH (RFC 7296 §1.2)
    if not sa.host.has_other_sa(sa):
        payloads.append(Notify(ProtocolId.NONE, b"", NotifyType.INITIAL_CONTACT))
    if sa.peer.auth == "cert":
        payloads += cert_request(sa)
    child = ChildInfo(tuple(sa.peer.local_ts), tuple(sa.peer.remote_ts))
    payloads += [
        auth[-1],
        SA(with_spi(without_dh(sa.host.esp_proposals), spi)),
        TSi(ts_i),
        TSr(ts_r),
        *sa.host.extensions.payloads(sa.view(), MessageInfo(AUTH, False, child)),
        *sa.our_vendor_ids(),
    ]
    sa.set_state(State.AUTH_SENT)
    sa.window.take_pending()
    sa.queue(AUTH, payloads, lambda m, t: on_auth_response(sa, m, t), RequestKind.AUTH, now)


def on_auth_response(sa: IkeSa, msg: Message, now: float) -> None:
    assert sa.peer is not None
    if msg.notifies(NotifyType.AUTHENTICATION_FAILED):
        sa.auth_failed(now, sa.peer.name, "peer refused our authentication (AUTHENTICATION_FAILED): "
                       "key, certificate or identity mismatch")
        return
    idr, auth = msg.find(IDr), msg.find(Auth)
    if idr is None or auth is None:
        errors = error_notifies(msg)
        why = notify_name(errors[0].notify_type) if errors else "no IDr/AUTH"
        sa.close(now, f"IKE_AUTH failed: {why}")
        return
    if (idr.id_type, idr.data) != identity(sa.peer.remote_id):
        sa.auth_failed(now, sa.peer.name, f"peer identity {identity_text(idr.id_type, idr.data)!r} "
                       f"is not the configured {sa.peer.remote_id!r}")
        return
    refused = check_peer_auth(sa, sa.peer, msg, idr, auth)
    if refused is not None:
        sa.auth_failed(now, sa.peer.name, f"peer's AUTH does not verify: {refused}")
        return
    sa.learn_peer(msg)
    ctx = sa.auth_ctx
    child = ChildInfo(tuple(sa.peer.local_ts), tuple(sa.peer.remote_ts))
    # Authenticated now: extensions may read it (and, following an RFC 5685 REDIRECT, close the SA).
    sa.host.extensions.received(sa.view(), MessageInfo(AUTH, True, child), msg.payloads, now)
    if sa.state != State.AUTH_SENT:
        sa.withdraw_spi(ctx.spi)
        return
    sa.establish(now)
    try:
        children.accept_response(sa, msg, ctx, None, now, sa.ni, sa.nr, None)
    except ProtocolFailure as e:
        sa.withdraw_spi(ctx.spi)
        sa.host.log(f"{sa.peer_name}: IKE SA up without child SA: {e}")


# --- responder ------------------------------------------------------------------------------


def respond_init(sa: IkeSa, msg: Message, raw: bytes, addr: tuple[str, int], local_port: int,
                 chosen: Proposal, now: float) -> None:
    """Answer an admitted IKE_SA_INIT request; the endpoint already checked SA and KE group."""
    ke, nonce = msg.find(KE), msg.find(Nonce)
    assert ke is not None and nonce is not None
    sa.spi_i = msg.spi_i
    sa.init_req = raw
    sa.init_offer = offer(msg)
    sa.ni = nonce.data
    sa.nr = sa.host.rng(NONCE_LEN)
    sa.dh = crypto.DhKeyPair.generate(ke.group, sa.host.rng)
    shared = sa.dh.shared_secret(ke.data)  # ValueError handled by the endpoint
    sa.peer_notifies |= {n.notify_type for n in msg.find_all(Notify) if n.notify_type >= 16384}
    check_nat(sa, msg, addr, local_port)
    mine = dataclasses.replace(chosen, spi=b"")
    sa.set_keys(mine, shared)
    sa.host.extensions.received(sa.view(), MessageInfo(INIT, False), msg.payloads, now)
    payloads = [
        SA([mine]),
        KE(sa.dh.group, sa.dh.public_bytes),
        Nonce(sa.nr),
        *nat_notifies(sa, sa.spi_i, sa.spi_r),
        *signature_hashes(sa),
        *fragmentation_supported(sa, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in sa.peer_notifies),
        *cert_request(sa),
        *sa.host.extensions.payloads(sa.view(), MessageInfo(INIT, True)),
        *sa.our_vendor_ids(),
    ]
    sa.init_resp = encode(sa.msg(INIT, 0, True, payloads))
    sa.peer_mid = 1
    sa.last_resp = (0, [sa.init_resp])
    sa.send_raw(sa.init_resp, addr, local_port)


def repeat_init_response(sa: IkeSa, data: bytes, addr: tuple[str, int], local_port: int) -> None:
    """A retransmitted request gets the same answer (RFC 7296 §2.1). So does a later version
    of it that offers the same SA, KE and Nonce and differs only in a COOKIE: under load a
    retransmission of the cookie-less request can reach us after we stopped asking for
    cookies, and we answered it; the peer then signs its cookie version in AUTH."""
    if data != sa.init_req and data not in sa.init_req_variants:
        try:
            msg = decode(data)
        except (ParseError, IntegrityError):
            return
        if (not msg.initiator or offer(msg) != sa.init_offer
                or len(sa.init_req_variants) >= MAX_INIT_RETRIES):
            return
        sa.init_req_variants.append(data)
    sa.send_raw(sa.init_resp, addr, local_port)


def hold(sa: IkeSa, ident: tuple[int, bytes], claimed: str, now: float) -> bool:
    """Keep an IKE_AUTH from an unknown identity for a while if an extension expects that peer."""
    if sa.held_since is not None and now - sa.held_since >= HOLD_AUTH_S:
        return False
    if not sa.host.extensions.hold_auth(sa.view(), claimed, now) or sa.request is None:
        return False
    if sa.held_since is None:
        sa.held_since = now
        sa.host.log(f"{claimed}: IKE_AUTH held: no such peer yet, an extension expects one")
    sa.held = (ident, sa.request)
    return True


def on_auth_request(sa: IkeSa, msg: Message, addr: tuple[str, int], now: float) -> list | None:
    idi, auth = msg.find(IDi), msg.find(Auth)
    if idi is None or auth is None:
        raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "IKE_AUTH without IDi or AUTH")
    claimed = identity_text(idi.id_type, idi.data)
    peer = sa.host.peer_by_identity(idi.id_type, idi.data)
    if peer is None and hold(sa, (idi.id_type, idi.data), claimed, now):
        return None  # unanswered for now: add_peer() replays it, or the initiator retransmits
    if peer is None:
        sa.auth_failed(now, claimed, f"identity {claimed!r} matches no configured peer", addr)
        return [Notify(ProtocolId.NONE, b"", NotifyType.AUTHENTICATION_FAILED)]
    refused = check_peer_auth(sa, peer, msg, idi, auth, (sa.init_req, *sa.init_req_variants))
    if refused is not None:
        sa.auth_failed(now, peer.name, f"AUTH from {claimed!r} does not verify: {refused}", addr)
        return [Notify(ProtocolId.NONE, b"", NotifyType.AUTHENTICATION_FAILED)]
    sa.peer = peer
    sa.learn_peer(msg)
    id_type, id_data = identity(peer.local_id or sa.host.config.local_id)
    idr = IDr(id_type, id_data)
    out: list = [idr, *our_auth(sa, peer, idr)]
    exts = sa.host.extensions
    offered = ChildInfo(tuple(peer.local_ts), tuple(peer.remote_ts))
    exts.received(sa.view(), MessageInfo(AUTH, False, offered), msg.payloads, now)
    refusal = exts.admit_auth(sa.view(), msg.payloads, now)
    if refusal:
        # RFC 5685 §6: authenticated both ways, but no IKE SA: IDr, AUTH and the extension's notifies.
        sa.set_state(State.REFUSED)
        sa.linger_until = now + REKEYED_GRACE
        sa.host.log(f"{peer.name}: IKE_AUTH answered with {', '.join(notify_name(n.notify_type) for n in refusal)}")
        return out + refusal
    if msg.notifies(NotifyType.INITIAL_CONTACT):
        sa.host.initial_contact(sa, now)
    sa.establish(now)
    child = offered
    try:
        sa_p, tsi, tsr = children.answer(sa, msg, None, now, sa.ni, sa.nr, None, in_auth=True)
        out += [sa_p, tsi, tsr]
        child = ChildInfo(cidrs(tsr.selectors), cidrs(tsi.selectors))
    except ProtocolFailure as e:
        sa.host.log(f"{peer.name}: IKE SA up without child SA: {e}")
        out.append(Notify(ProtocolId.NONE, b"", e.notify, e.data))
    out += exts.payloads(sa.view(), MessageInfo(AUTH, True, child))
    return out + sa.our_vendor_ids()
