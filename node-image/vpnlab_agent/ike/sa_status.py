"""What `ctl status` shows of an endpoint's IKE SAs and child SAs (plain dicts, for JSON). Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from vpnlab_agent.ike.fragment import FragmentStats


def endpoint_status(sessions: Iterable[Any], half_open: int, fragments: FragmentStats, now: float) -> dict[str, Any]:
    ike, children = [], []
    for s in sessions:
        ike.append(s.status(now))
        for c in s.children.values():
            children.append(child_status(c, now))
    return {"ike_sas": ike, "child_sas": children, "half_open": half_open, "ike_fragments": fragments.as_dict()}


def child_status(c: Any, now: float) -> dict[str, Any]:
    sa = c.sa
    return {
        "peer": sa.name,
        "reqid": sa.reqid,
        "local_ts": list(sa.local_ts),
        "remote_ts": list(sa.remote_ts),
        "spi_in": f"{sa.spi_in:08x}",
        "spi_out": f"{sa.spi_out:08x}",
        "algorithm": f"{sa.algorithm.cipher}-{sa.algorithm.key_bits}"
                     + (f"-{sa.algorithm.integ}" if sa.algorithm.integ else ""),
        "encap": sa.encap,
        "age_s": round(now - c.created, 1),
        "state": "rekeyed" if c.expire_at is not None else "installed",
        "preference": getattr(sa, "preference", 0),
    }
