"""What the XFRM engine asks the kernel for, per child SA: its two states and its policies (pure).

Marks. An SA's own `mark` (full mask), else the engine's, goes on both states and every policy:
only packets carrying it use the SA, inbound ESP included. An SA of a routing context
(per-network, docs/hsvpn.md) is different, because its ESP arrives unmarked beside every other
context's on the one UDP 4500 socket: its outbound state and its policies match the context's
mark (what the contexts service puts on every packet entering the context); its inbound state is
found by SPI alone and puts the context's mark on the packet it decrypts, so that packet is
routed in its context (`ip rule fwmark`) and checked against that context's policies only; and
the outbound state clears the mark on the ESP packet it makes, so the outer packet is routed in
main, where the peer is, not in the context. if_id needs XFRM interfaces (a policy with an
if_id matches only what is routed through one), so contexts do not use it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from vpnlab_agent.dataplane import xfrm_netlink as nl
from vpnlab_agent.dataplane.base import EngineError
from vpnlab_agent.netconfig import PREFERENCE_RANGE, clamp_preference
from vpnlab_agent.sa import ChildSA

GCM_ICV_BITS = 128
HMAC_SHA256_TRUNC_BITS = 128
FULL_MASK = 0xFFFFFFFF
# Policy priority (lower wins): POLICY_PRIORITY - selector prefix lengths * step - preference rank
POLICY_PRIORITY = 300_000
_PREF_STEP = PREFERENCE_RANGE[1] - PREFERENCE_RANGE[0] + 1


def algorithm_attrs(sa: ChildSA, inbound: bool) -> dict[str, Any]:
    """The kernel algorithm names and keys for one direction of sa."""
    enc = sa.enc_key_in if inbound else sa.enc_key_out
    integ = sa.integ_key_in if inbound else sa.integ_key_out
    alg = sa.algorithm
    if alg.cipher == "aes-gcm-16":
        if len(enc) != alg.key_bits // 8 + 4:
            raise EngineError(f"SA {sa.name}: aes-gcm-16 key must be {alg.key_bits // 8} bytes + 4 salt")
        return {"aead": ("rfc4106(gcm(aes))", enc, GCM_ICV_BITS)}
    if alg.cipher == "aes-cbc" and alg.integ == "hmac-sha256-128":
        if len(enc) != alg.key_bits // 8 or len(integ) != 32:
            raise EngineError(f"SA {sa.name}: aes-cbc needs a {alg.key_bits // 8}-byte key and 32-byte HMAC key")
        return {"crypt": ("cbc(aes)", enc), "auth": ("hmac(sha256)", integ, HMAC_SHA256_TRUNC_BITS)}
    raise EngineError(f"SA {sa.name}: unsupported ESP algorithm {alg.cipher}/{alg.integ}")


def sa_mark(sa: ChildSA, default: nl.Mark | None = None) -> nl.Mark | None:
    """The SA's own mark (full mask) if it has one, else the engine's."""
    return (sa.mark, FULL_MASK) if sa.mark else default


def state_specs(sa: ChildSA, mark: nl.Mark | None = None, context_mark: int = 0) -> tuple[nl.StateSpec, nl.StateSpec]:
    """(inbound, outbound) states of a child SA; mark is the engine's default, context_mark the
    mark of the routing context the SA belongs to (0: none; see the module's doc)."""
    common = {"reqid": sa.reqid, "soft_bytes": sa.soft_lifetime_bytes, "hard_bytes": sa.hard_lifetime_bytes,
              "if_id": sa.if_id}
    if context_mark:
        ctx = (context_mark, FULL_MASK)
        marks_in = {"mark": None, "set_mark": ctx}
        marks_out = {"mark": ctx, "set_mark": (0, FULL_MASK)}
    else:
        marks_in = marks_out = {"mark": sa_mark(sa, mark)}
    inbound = nl.StateSpec(
        src=sa.remote_addr, dst=sa.local_addr, spi=sa.spi_in,
        encap=(sa.remote_port, sa.local_port) if sa.encap else None,
        **algorithm_attrs(sa, inbound=True), **common, **marks_in,
    )  # fmt: skip
    outbound = nl.StateSpec(
        src=sa.local_addr, dst=sa.remote_addr, spi=sa.spi_out,
        encap=(sa.local_port, sa.remote_port) if sa.encap else None,
        replay_window=0, **algorithm_attrs(sa, inbound=False), **common, **marks_out,
    )  # fmt: skip
    return inbound, outbound


def policy_priority(local_ts: str, remote_ts: str, preference: int = 0) -> int:
    """More specific selectors first, then the higher preference (a lower value wins)."""
    rank = clamp_preference(preference) - PREFERENCE_RANGE[0]
    return POLICY_PRIORITY - (_plen(local_ts) + _plen(remote_ts)) * _PREF_STEP - rank


def policy_specs(sa: ChildSA, mark: nl.Mark | None = None, context_mark: int = 0) -> list[nl.PolicySpec]:
    specs = []
    mark, if_id = ((context_mark, FULL_MASK) if context_mark else sa_mark(sa, mark)), sa.if_id
    for lts in sa.local_ts:
        for rts in sa.remote_ts:
            prio = policy_priority(lts, rts, sa.preference)
            for src, dst, direction, t_src, t_dst in (
                (lts, rts, nl.XFRM_POLICY_OUT, sa.local_addr, sa.remote_addr),
                (rts, lts, nl.XFRM_POLICY_IN, sa.remote_addr, sa.local_addr),
                (rts, lts, nl.XFRM_POLICY_FWD, sa.remote_addr, sa.local_addr),
            ):
                specs.append(nl.PolicySpec(src, dst, direction, t_src, t_dst, sa.reqid, prio, mark, if_id))
    return specs


def _plen(cidr: str) -> int:
    return ipaddress.IPv4Network(cidr, strict=False).prefixlen
