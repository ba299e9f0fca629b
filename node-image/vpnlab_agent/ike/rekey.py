"""CREATE_CHILD_SA (RFC 7296 §1.3, §2.8, §2.18): child rekeys and IKE SA rekeys, both sides,
make-before-break. New children beyond IKE_AUTH's are not requested by us (one child per peer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vpnlab_agent.ike import crypto, informational, proposals
from vpnlab_agent.ike.codec import KE, SA, TSi, TSr, Delete, Message, Nonce, Notify, Proposal, ts_from_cidr
from vpnlab_agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from vpnlab_agent.ike.events import IkeSAUp
from vpnlab_agent.ike.extension import ChildInfo, MessageInfo
from vpnlab_agent.ike.ikesa import (
    NONCE_LEN,
    REKEYED_GRACE,
    Child,
    ChildCtx,
    IkeSa,
    ProtocolFailure,
    State,
    error_notifies,
    notify_name,
)
from vpnlab_agent.ike import children
from vpnlab_agent.ike.policy import cidrs, with_spi
from vpnlab_agent.ike.proposals import dh_group, without_dh
from vpnlab_agent.ike.window import CARRIED_OVER, Request, RequestKind

CCS = ExchangeType.CREATE_CHILD_SA


# --- initiator: child rekey -----------------------------------------------------------------


def rekey_child(sa: IkeSa, child: Child, now: float) -> bool:
    if not sa.established or child.rekeying or child.expire_at is not None:
        return False
    child.rekeying = True
    spi = sa.offer_spi()
    nonce = sa.host.rng(NONCE_LEN)
    group = dh_group(sa.host.esp_proposals[0])
    dh = crypto.DhKeyPair.generate(group, sa.host.rng) if group else None
    ts_i = [ts_from_cidr(c) for c in child.sa.local_ts]
    ts_r = [ts_from_cidr(c) for c in child.sa.remote_ts]
    ctx = ChildCtx(nonce, spi, dh, child, offered_ts=(ts_i, ts_r))
    ok = sa.queue(CCS, child_rekey_payloads(sa, ctx), lambda m, t: on_child_rekey_response(sa, m, t, ctx),
                  RequestKind.REKEY_CHILD, now, child)
    if not ok:
        child.rekeying = False
        sa.withdraw_spi(spi)
    return ok


def child_rekey_payloads(sa: IkeSa, ctx: ChildCtx) -> list:
    assert ctx.old is not None
    old = ctx.old.sa
    payloads: list = [
        Notify(ProtocolId.ESP, old.spi_in.to_bytes(4, "big"), NotifyType.REKEY_SA),
        SA(with_spi(sa.host.esp_proposals if ctx.dh else without_dh(sa.host.esp_proposals), ctx.spi)),
        Nonce(ctx.nonce),
    ]
    if ctx.dh is not None:
        payloads.append(KE(ctx.dh.group, ctx.dh.public_bytes))
    info = ChildInfo(old.local_ts, old.remote_ts, old)
    return payloads + [TSi(ctx.offered_ts[0]), TSr(ctx.offered_ts[1]),
                       *sa.host.extensions.payloads(sa.view(), MessageInfo(CCS, False, info))]


def retry_invalid_ke(sa: IkeSa, msg: Message, ctx: ChildCtx, offered: list[Proposal],
                     build: Callable[[IkeSa, ChildCtx], list],
                     on_response: Callable[[IkeSa, Message, float, ChildCtx], None], kind: RequestKind,
                     now: float) -> bool:
    """INVALID_KE_PAYLOAD naming a group we offered: ask once more with a KE of that group.
    False if not (then the response is an error like any other)."""
    bad_ke = msg.notifies(NotifyType.INVALID_KE_PAYLOAD)
    if not bad_ke or ctx.retries >= 1 or len(bad_ke[0].data) != 2:
        return False
    group = int.from_bytes(bad_ke[0].data, "big")
    if group not in {dh_group(p) for p in offered}:
        return False
    ctx.retries += 1
    ctx.dh = crypto.DhKeyPair.generate(group, sa.host.rng)
    return sa.queue(CCS, build(sa, ctx), lambda m, t: on_response(sa, m, t, ctx), kind, now, ctx.old)


def on_child_rekey_response(sa: IkeSa, msg: Message, now: float, ctx: ChildCtx) -> None:
    old = ctx.old
    assert old is not None
    if retry_invalid_ke(sa, msg, ctx, sa.host.esp_proposals, child_rekey_payloads, on_child_rekey_response,
                        RequestKind.REKEY_CHILD, now):
        return
    nonce, ke = msg.find(Nonce), msg.find(KE)
    try:
        errors = error_notifies(msg)
        if errors:
            raise ProtocolFailure(errors[0].notify_type, f"refused: {notify_name(errors[0].notify_type)}")
        if nonce is None:
            raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child rekey response without Nonce")
        shared = None
        if ctx.dh is not None:
            if ke is None or ke.group != ctx.dh.group:
                raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child rekey response without matching KE")
            try:
                shared = ctx.dh.shared_secret(ke.data)
            except ValueError as e:
                raise ProtocolFailure(NotifyType.INVALID_SYNTAX, f"bad KE value: {e}") from e
        info = ChildInfo(old.sa.local_ts, old.sa.remote_ts, old.sa)
        sa.host.extensions.received(sa.view(), MessageInfo(CCS, True, info), msg.payloads, now)
        children.accept_response(sa, msg, ctx, old, now, ctx.nonce, nonce.data, shared)
    except ProtocolFailure as e:
        sa.withdraw_spi(ctx.spi)
        old.rekeying = False
        old.rekey_at = sa.retry_time(now)  # try again later, still within the lifetime
        sa.host.log(f"{sa.peer_name}: child SA rekey failed: {e}")
        return
    informational.delete_children(sa.owner(), [old], now)


# --- initiator: IKE rekey -------------------------------------------------------------------


def rekey_ike(sa: IkeSa, now: float) -> bool:
    if not sa.established or sa.window.has(RequestKind.REKEY_IKE):
        return False
    spi = sa.host.new_ike_spi()
    nonce = sa.host.rng(NONCE_LEN)
    assert sa.proposal is not None
    group = dh_group(sa.proposal) or dh_group(sa.host.ike_proposals[0])
    ctx = ChildCtx(nonce, spi, crypto.DhKeyPair.generate(group, sa.host.rng))
    return sa.queue(CCS, ike_rekey_payloads(sa, ctx), lambda m, t: on_ike_rekey_response(sa, m, t, ctx),
                    RequestKind.REKEY_IKE, now)


def ike_rekey_payloads(sa: IkeSa, ctx: ChildCtx) -> list:
    # extensions see an IKE SA rekey as a CREATE_CHILD_SA of the old IKE SA without a child
    return [SA(with_spi(sa.host.ike_proposals, ctx.spi)), Nonce(ctx.nonce), KE(ctx.dh.group, ctx.dh.public_bytes),
            *sa.host.extensions.payloads(sa.view(), MessageInfo(CCS, False))]


def on_ike_rekey_response(sa: IkeSa, msg: Message, now: float, ctx: ChildCtx) -> None:
    if retry_invalid_ke(sa, msg, ctx, sa.host.ike_proposals, ike_rekey_payloads, on_ike_rekey_response,
                        RequestKind.REKEY_IKE, now):
        return
    sa_p, nonce, ke = msg.find(SA), msg.find(Nonce), msg.find(KE)
    if (sa_p is None or nonce is None or ke is None or len(sa_p.proposals) != 1
            or len(sa_p.proposals[0].spi) != 8 or ke.group != ctx.dh.group
            or proposals.select(sa_p.proposals, sa.host.ike_proposals) is None):
        sa.rekey_at = sa.retry_time(now)
        sa.host.log(f"{sa.peer_name}: IKE SA rekey refused or malformed answer")
        return
    try:
        shared = ctx.dh.shared_secret(ke.data)
    except ValueError:
        sa.rekey_at = sa.retry_time(now)
        return
    chosen = sa_p.proposals[0]
    sa.host.extensions.received(sa.view(), MessageInfo(CCS, True), msg.payloads, now)
    replace_by(sa, chosen, chosen.spi, ctx.spi, ctx.nonce, nonce.data, shared, we_initiated=True, now=now)
    # make-before-break: the new IKE SA exists; now retire this one.
    sa.window.queue.append(Request(ExchangeType.INFORMATIONAL, [Delete(ProtocolId.IKE, [])],
                                   lambda m, t: sa.close(t, None, quiet=True), RequestKind.DELETE_IKE))


# --- responder ------------------------------------------------------------------------------


def on_create_child_request(sa: IkeSa, msg: Message, addr: tuple[str, int], now: float) -> list | None:
    sa_p, nonce = msg.find(SA), msg.find(Nonce)
    if sa_p is None or nonce is None or not 16 <= len(nonce.data) <= 256:
        raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA without SA or Nonce")
    pending = sa.window.pending
    if pending is not None and pending.kind in (RequestKind.REKEY_IKE, RequestKind.DELETE_IKE):
        raise ProtocolFailure(NotifyType.TEMPORARY_FAILURE, "IKE SA is being rekeyed or deleted")
    if any(p.protocol == ProtocolId.IKE for p in sa_p.proposals):
        return answer_ike_rekey(sa, msg, sa_p, nonce, now)
    rekey = [n for n in msg.notifies(NotifyType.REKEY_SA) if n.protocol == ProtocolId.ESP]
    old = None
    if rekey:
        old = sa.child_by_out(rekey[0].spi)
        if old is None:
            raise ProtocolFailure(NotifyType.CHILD_SA_NOT_FOUND, "rekey of an unknown child SA")
        if old.rekeying:
            raise ProtocolFailure(NotifyType.TEMPORARY_FAILURE, "child SA rekey collision")
    assert sa.peer is not None
    offered = ChildInfo(old.sa.local_ts if old else tuple(sa.peer.local_ts),
                        old.sa.remote_ts if old else tuple(sa.peer.remote_ts), old.sa if old else None)
    sa.host.extensions.received(sa.view(), MessageInfo(CCS, False, offered), msg.payloads, now)
    nr = sa.host.rng(NONCE_LEN)
    shared, ke_out = answer_ke(sa, msg, sa_p)
    sa_out, tsi_out, tsr_out = children.answer(sa, msg, old, now, nonce.data, nr, shared)
    payloads: list = [sa_out, Nonce(nr)]
    if ke_out is not None:
        payloads.append(ke_out)
    info = ChildInfo(cidrs(tsr_out.selectors), cidrs(tsi_out.selectors), old.sa if old else None)
    return payloads + [tsi_out, tsr_out, *sa.host.extensions.payloads(sa.view(), MessageInfo(CCS, True, info))]


def answer_ke(sa: IkeSa, msg: Message, sa_p: SA) -> tuple[bytes | None, KE | None]:
    """PFS for a child rekey: if our proposals want DH, the KE must be of the chosen group."""
    esp = [p for p in sa_p.proposals if p.protocol == ProtocolId.ESP]
    chosen = proposals.select(esp, sa.host.esp_proposals)
    group = dh_group(chosen) if chosen else None
    if group is None:
        return None, None
    ke = msg.find(KE)
    if ke is None or ke.group != group:
        raise ProtocolFailure(NotifyType.INVALID_KE_PAYLOAD, "KE of the wrong group", group.to_bytes(2, "big"))
    dh = crypto.DhKeyPair.generate(group, sa.host.rng)
    try:
        shared = dh.shared_secret(ke.data)
    except ValueError as e:
        raise ProtocolFailure(NotifyType.INVALID_SYNTAX, f"bad KE value: {e}") from e
    return shared, KE(group, dh.public_bytes)


def answer_ike_rekey(sa: IkeSa, msg: Message, sa_p: SA, nonce: Nonce, now: float) -> list:
    offered = [p for p in sa_p.proposals if p.protocol == ProtocolId.IKE and len(p.spi) == 8]
    chosen = proposals.select(offered, sa.host.ike_proposals)
    if chosen is None:
        raise ProtocolFailure(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal for rekey")
    group = dh_group(chosen)
    ke = msg.find(KE)
    if ke is None or ke.group != group:
        raise ProtocolFailure(NotifyType.INVALID_KE_PAYLOAD, "KE of the wrong group", (group or 0).to_bytes(2, "big"))
    peer_spi = chosen.spi
    dh = crypto.DhKeyPair.generate(group, sa.host.rng)
    try:
        shared = dh.shared_secret(ke.data)
    except ValueError as e:
        raise ProtocolFailure(NotifyType.INVALID_SYNTAX, f"bad KE value: {e}") from e
    sa.host.extensions.received(sa.view(), MessageInfo(CCS, False), msg.payloads, now)
    spi = sa.host.new_ike_spi()
    mine = dataclasses.replace(chosen, spi=spi)
    nr = sa.host.rng(NONCE_LEN)
    extra = sa.host.extensions.payloads(sa.view(), MessageInfo(CCS, True))  # asked while the old SA is the one
    replace_by(sa, mine, peer_spi, spi, nonce.data, nr, shared, we_initiated=False, now=now)
    return [SA([mine]), Nonce(nr), KE(group, dh.public_bytes), *extra]


def replace_by(sa: IkeSa, prop: Proposal, spi_i_or_peer: bytes, our_spi: bytes, ni: bytes, nr: bytes,
               shared: bytes, *, we_initiated: bool, now: float) -> IkeSa:
    """IKE rekey (RFC 7296 §2.18): a new IKE SA takes over peer, addresses and children."""
    spi_i, spi_r = (our_spi, spi_i_or_peer) if we_initiated else (spi_i_or_peer, our_spi)
    new = sa.spawn(initiator=we_initiated, local_spi=our_spi, remote=sa.remote, local_port=sa.local_port,
                   now=now, peer=sa.peer, state=State.ESTABLISHED)
    new.spi_i, new.spi_r = spi_i, spi_r
    new.proposal = dataclasses.replace(prop, spi=b"")
    new.suite = proposals.suite_from_proposal(prop)
    new.keys = crypto.derive_ike_keys(new.suite, ni, nr, shared, spi_i, spi_r, old_sk_d=sa.keys.sk_d,
                                      old_prf=sa.suite.prf)
    new.ni, new.nr = ni, nr
    new.set_ciphers()
    new.nat_local, new.nat_remote, new.encap = sa.nat_local, sa.nat_remote, sa.encap
    new.peer_vendor_ids, new.peer_notifies = list(sa.peer_vendor_ids), set(sa.peer_notifies)
    new.children, sa.children = sa.children, {}
    new.start_lifetime(now)
    sa.set_state(State.REKEYED)
    sa.successor = new
    sa.linger_until = now + REKEYED_GRACE
    for req in sa.window.queue:
        if req.child is not None:  # child rekeys not sent yet: the new IKE SA does them right away
            req.child.rekeying = False
            req.child.rekey_at = now
        elif req.kind in CARRIED_OVER:  # DELETEs of children and notifies still matter
            new.window.queue.append(Request(req.exchange, req.payloads, req.on_response, req.kind,
                                            on_fail=req.on_fail))
    sa.window.queue.clear()
    sa.host.adopt(new)
    sa.host.extensions.ike_rekeyed(sa.view(), new.view(), now)
    assert sa.peer is not None
    sa.host.emit(IkeSAUp(sa.peer.name, spi_i, spi_r, we_initiated, new.suite.describe(), sa.remote, rekey=True,
                         vendor_ids=tuple(new.peer_vendor_ids), notifies=tuple(sorted(new.peer_notifies))))
    return new
