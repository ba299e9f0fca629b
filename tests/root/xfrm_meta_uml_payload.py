"""Runs inside user-mode Linux (see test_xfrm_uml.py): ChildSA metadata on the kernel XFRM engine.

Same two namespaces as xfrm_uml_payload.py. Two SAs with the SAME selectors on both sides, the second
(reqid 7) preferred: it holds the policies and carries the traffic; once it is removed, the policies
move back to reqid 6 and the traffic falls back to it. Then a per-SA mark and if_id on one more SA's
states and policies. Prints one JSON line of facts.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import sys
import traceback
from typing import Any

from tests.root.xfrm_uml_payload import GCM, Side, child_sa, ping, setup_namespaces, sh, xfrm_dump


def main() -> dict[str, Any]:
    setup_namespaces()
    ctx = mp.get_context("fork")
    lans = ("10.1.0.0/24", "10.2.0.0/24")
    keys = {"enc_ab": bytes(range(20)), "enc_ba": bytes(range(20, 40))}
    out: dict[str, Any] = {}
    a, b = Side(ctx, "xa"), Side(ctx, "xb")
    other = {"enc_ab": bytes(range(80, 100)), "enc_ba": bytes(range(100, 120))}
    for side in (a, b):
        side("install", child_sa(side.name, GCM, 6, 0x6000A, 0x6000B, lans, keys))
        side("install", dataclasses.replace(child_sa(side.name, GCM, 7, 0x7000A, 0x7000B, lans, other), preference=10))
    out["policies"] = sh("ip", "xfrm", "policy", ns="xa").stdout
    out["routes"] = sh("ip", "route", "show", "10.2.0.0/24", ns="xa").stdout
    out["ping"] = ping("xa", "10.2.0.1")
    out["hub"], out["shortcut"] = a("counters", 0x6000B), a("counters", 0x7000B)
    for side in (a, b):
        side("remove", 0x7000B if side.name == "xa" else 0x7000A)
    out["policies_after"] = sh("ip", "xfrm", "policy", ns="xa").stdout
    out["routes_after"] = sh("ip", "route", "show", "10.2.0.0/24", ns="xa").stdout
    out["ping_after"] = ping("xa", "10.2.0.1", count=3)
    out["hub_after"] = a("counters", 0x6000B)
    marked = dataclasses.replace(child_sa("xa", GCM, 8, 0x8000A, 0x8000B, ("10.11.0.0/24", "10.12.0.0/24"), other),
                                 mark=0x20, if_id=9)
    a("install", marked)
    out["marked_states"] = sh("ip", "xfrm", "state", "list", "spi", "0x0008000a", ns="xa").stdout
    out["marked_policies"] = sh("ip", "xfrm", "policy", "list", "src", "10.11.0.0/24", ns="xa").stdout
    out["marked_counters"] = a("counters", 0x8000B)  # GETSA must carry the SA's own mark
    a("remove", 0x8000B)
    out["marked_after_remove"] = xfrm_dump("xa")
    for side in (a, b):
        side("close")
        side.proc.join(5)
    out["after_close"] = xfrm_dump("xa")
    return out


if __name__ == "__main__":
    try:
        result = main()
        code = 0
    except Exception:
        result = {"error": traceback.format_exc()}
        code = 1
    print("RESULT " + json.dumps(result, default=str))
    sys.stdout.flush()
    os._exit(code)
