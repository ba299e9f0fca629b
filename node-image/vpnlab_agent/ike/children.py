"""Child SA negotiation (RFC 7296 §1.3, §2.9, §2.17): proposal choice, traffic selector narrowing,
KEYMAT, and the ChildSA handed to the data plane, with the metadata extensions set (`child_meta`).

Used by IKE_AUTH (the first child) and CREATE_CHILD_SA (new children and rekeys), both sides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vpnlab_agent.ike import crypto, proposals
from vpnlab_agent.ike.codec import SA, TSi, TSr, Message, Payload, Proposal
from vpnlab_agent.ike.constants import NATT_PORT, NotifyType, ProtocolId
from vpnlab_agent.ike.events import ChildSAUp
from vpnlab_agent.ike.extension import ChildInfo
from vpnlab_agent.ike.ikesa import REKEYED_GRACE, Child, ChildCtx, IkeSa, ProtocolFailure, carry_meta, error_notifies, notify_name
from vpnlab_agent.ike.policy import cidrs, narrow, spi_int, within
from vpnlab_agent.ike.proposals import dh_group, without_dh
from vpnlab_agent.sa import ChildSA


def answer(sa: IkeSa, msg: Message, old: Child | None, now: float, ni: bytes, nr: bytes,
           shared: bytes | None, *, in_auth: bool = False) -> list:
    """Responder: select ESP proposal, narrow selectors, create the child; → [SA, TSi, TSr]."""
    assert sa.peer is not None
    sa_p, tsi, tsr = msg.find(SA), msg.find(TSi), msg.find(TSr)
    if sa_p is None or tsi is None or tsr is None:
        raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child SA request lacks SA/TSi/TSr")
    esp = [p for p in sa_p.proposals if p.protocol == ProtocolId.ESP and len(p.spi) == 4]
    mine_all = sa.host.esp_proposals
    if shared is not None:  # PFS: the KE matched the group of the proposal rekey.answer_ke chose
        ours, offered = mine_all, esp
    elif in_auth:  # the first child's keys come from the IKE SA's DH
        ours, offered = without_dh(mine_all), without_dh(esp)
    else:  # CREATE_CHILD_SA without a DH exchange: only our proposals that ask for none
        ours, offered = [p for p in mine_all if dh_group(p) is None], without_dh(esp)
    chosen = proposals.select(offered, ours)
    if chosen is None:
        raise ProtocolFailure(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")
    # TSi is the initiator's side: the peer's networks, i.e. our remote_ts.
    ts_i = narrow(tsi.selectors, sa.peer.remote_ts or ("0.0.0.0/0",))
    ts_r = narrow(tsr.selectors, sa.peer.local_ts or ("0.0.0.0/0",))
    if not ts_i or not ts_r:
        raise ProtocolFailure(NotifyType.TS_UNACCEPTABLE, "traffic selectors do not match our configuration")
    peer_spi = chosen.spi  # select() keeps the offered SPI (proposal numbers need not be unique)
    spi = sa.host.new_child_spi()
    mine = dataclasses.replace(chosen, spi=spi)
    suite = proposals.suite_from_proposal(mine)
    keys = crypto.derive_child_keys(suite, sa.suite.prf, sa.keys.sk_d, ni, nr, shared)
    add(sa, mine, suite, keys, False, spi_int(spi), spi_int(peer_spi), cidrs(ts_r), cidrs(ts_i), old, now,
        msg.payloads)
    return [SA([mine]), TSi(ts_i), TSr(ts_r)]


def accept_response(sa: IkeSa, msg: Message, ctx: ChildCtx, old: Child | None, now: float,
                    ni: bytes, nr: bytes, shared: bytes | None) -> Child:
    """Initiator: check the responder's SA/TS for a child we asked for, and install it."""
    assert sa.peer is not None
    errors = error_notifies(msg)
    if errors:
        raise ProtocolFailure(errors[0].notify_type, f"child SA refused: {notify_name(errors[0].notify_type)}")
    sa_p, tsi, tsr = msg.find(SA), msg.find(TSi), msg.find(TSr)
    if sa_p is None or tsi is None or tsr is None or len(sa_p.proposals) != 1:
        raise ProtocolFailure(NotifyType.INVALID_SYNTAX, "child SA response lacks SA/TSi/TSr")
    chosen = sa_p.proposals[0]
    offered = sa.host.esp_proposals if shared is not None else without_dh(sa.host.esp_proposals)
    if chosen.protocol != ProtocolId.ESP or len(chosen.spi) != 4 or proposals.select([chosen], offered) is None:
        raise ProtocolFailure(NotifyType.NO_PROPOSAL_CHOSEN, "responder chose an ESP proposal we did not offer")
    if not (within(tsi.selectors, ctx.offered_ts[0]) and within(tsr.selectors, ctx.offered_ts[1])):
        raise ProtocolFailure(NotifyType.TS_UNACCEPTABLE, "responder widened the traffic selectors")
    suite = proposals.suite_from_proposal(chosen)
    keys = crypto.derive_child_keys(suite, sa.suite.prf, sa.keys.sk_d, ni, nr, shared)
    mine = dataclasses.replace(chosen, spi=ctx.spi)
    return add(sa, mine, suite, keys, True, spi_int(ctx.spi), spi_int(chosen.spi),
               cidrs(tsi.selectors), cidrs(tsr.selectors), old, now, msg.payloads)


def add(sa: IkeSa, prop: Proposal, suite: Any, keys: Any, exch_initiator: bool, spi_in: int, spi_out: int,
        local_ts: tuple[str, ...], remote_ts: tuple[str, ...], old: Child | None, now: float,
        peer_payloads: list[Payload]) -> Child:
    assert sa.peer is not None
    # KEYMAT order (RFC 7296 §2.17): keys for initiator→responder traffic first, where the
    # initiator is the one who started this exchange.
    if exch_initiator:
        enc_out, int_out, enc_in, int_in = keys.enc_i, keys.integ_i, keys.enc_r, keys.integ_r
    else:
        enc_out, int_out, enc_in, int_in = keys.enc_r, keys.integ_r, keys.enc_i, keys.integ_i
    encap = sa.encap
    child_sa = ChildSA(
        name=sa.peer.name,
        reqid=old.sa.reqid if old else sa.host.reqid(sa.peer.name, local_ts, remote_ts),
        spi_in=spi_in,
        spi_out=spi_out,
        algorithm=suite.algorithm(),
        enc_key_in=enc_in,
        enc_key_out=enc_out,
        integ_key_in=int_in,
        integ_key_out=int_out,
        local_addr=sa.host.local_addr,
        remote_addr=sa.remote[0],
        local_port=NATT_PORT if encap else 0,
        remote_port=sa.remote[1] if encap else 0,
        local_ts=local_ts,
        remote_ts=remote_ts,
    )
    info = ChildInfo(local_ts, remote_ts, old.sa if old else None, tuple(peer_payloads))
    meta = sa.host.extensions.child_meta(sa.view(), info)
    child_sa = carry_meta(old.sa, child_sa, meta) if old else (meta.apply(child_sa) if meta else child_sa)
    sa.offered_spis.discard(spi_in.to_bytes(4, "big"))
    lifetime = sa.host.config.child_lifetime_s
    child = Child(child_sa, prop, now, now + sa.rekey_after(lifetime), hard_at=now + lifetime)
    # A child rekey answered after our IKE SA was itself rekeyed belongs to the new IKE SA.
    sa.owner().children[spi_in] = child
    if old is not None:
        old.rekeying = False
        old.expire_at = now + REKEYED_GRACE
    sa.host.emit(ChildSAUp(child_sa, old.sa.spi_in if old else None))
    return child
