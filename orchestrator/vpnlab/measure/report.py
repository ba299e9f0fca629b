"""Pure arithmetic of the hub-traffic measurement: per-pair figures, the shortcut timeline, series.

Inputs are the agents' status dicts (`services.mesh`, `child_sas`) and iperf3 JSON; nothing here
talks to Docker, so it is unit-tested on recorded data.
"""

from __future__ import annotations

from typing import Any

# The steps of one shortcut, in order: (key in the report, label, where it is read).
STEPS: tuple[tuple[str, str], ...] = (
    ("session_seen", "session seen at B"),
    ("request_sent", "request sent to the hub"),
    ("hub_relayed", "relayed by the hub"),
    ("relay_at_a", "relay received at A"),
    ("punch_at_b", "B punched towards A's NAT mapping"),  # behind NAT with hole punching only
    ("ike_sa_init", "IKE_SA_INIT sent by A"),
    ("ike_auth", "IKE_AUTH done"),
    ("routes_switched", "routes switched (both sides)"),
    ("first_packet", "first packet on the shortcut"),
)


def mesh_of(status: dict[str, Any]) -> dict[str, Any]:
    return (status.get("services") or {}).get("mesh") or {}


def shortcut_entries(status: dict[str, Any], peer: str) -> list[dict[str, Any]]:
    """Every shortcut record (live or finished) this router has with `peer`."""
    m = mesh_of(status)
    live = [{"id": s["id"], "peer": s["peer"], "role": s["role"], "events": s.get("timeline", {}), "end": None}
            for s in m.get("shortcuts", [])]
    done = [t for t in m.get("timeline", []) if t.get("end") is not None]
    return [e for e in live + done if e.get("peer") == peer]


def timeline(b_status: dict[str, Any], a_status: dict[str, Any], hub_status: dict[str, Any],
             a: str, b: str, *, latest: bool = False) -> dict[str, float] | None:
    """Absolute times (monotonic seconds, shared by all containers of one host) of each step of the
    first (or latest) shortcut B (the receiving branch) asked A for; None when there was none."""
    asked = [e for e in shortcut_entries(b_status, a) if e["role"] == "requester" and "session_seen" in e["events"]]
    if not asked:
        return None
    first = (max if latest else min)(asked, key=lambda e: e["events"]["session_seen"])
    sid, eb = first["id"], first["events"]
    ea = next((e["events"] for e in shortcut_entries(a_status, b) if e["id"] == sid), {})
    relayed = [r["at"] for r in mesh_of(hub_status).get("relayed", []) if r.get("id") == sid]
    out: dict[str, float] = {}

    def put(key: str, *values: float | None, pick: Any = max) -> None:
        vals = [v for v in values if v is not None]
        if vals:
            out[key] = pick(vals)

    put("session_seen", eb.get("session_seen"))
    put("request_sent", eb.get("request_sent"))
    put("hub_relayed", *(relayed[:1] or [None]))
    put("relay_at_a", ea.get("relayed"))
    put("punch_at_b", eb.get("punch"))
    put("ike_sa_init", ea.get("ike_sa_init"))
    put("ike_auth", ea.get("ike_auth"), eb.get("ike_auth"))
    put("routes_switched", ea.get("routes_switched"), eb.get("routes_switched"))
    put("first_packet", ea.get("first_packet"), eb.get("first_packet"), pick=min)
    return out


def relative_ms(tl: dict[str, float] | None) -> dict[str, float]:
    if not tl or "session_seen" not in tl:
        return {}
    t0 = tl["session_seen"]
    return {k: round((v - t0) * 1000, 2) for k, v in tl.items()}


def hub_pair(hub_status: dict[str, Any], a: str, b: str) -> tuple[int, int]:
    """(packets, bytes) the hub forwarded between branches a and b, both directions."""
    packets = bytes_ = 0
    for p in mesh_of(hub_status).get("hub_pairs", []):
        if {p["src"], p["dst"]} == {a, b}:
            packets += p["packets"]
            bytes_ += p["bytes"]
    return packets, bytes_


def hub_total(hub_status: dict[str, Any]) -> tuple[int, int]:
    pairs = mesh_of(hub_status).get("hub_pairs", [])
    return sum(p["packets"] for p in pairs), sum(p["bytes"] for p in pairs)


def shortcut_bytes(a_status: dict[str, Any], b: str) -> int:
    """Inner bytes both ways over a's child SAs with b (the shortcut), live ones only."""
    return sum(c.get("bytes_in", 0) + c.get("bytes_out", 0) for c in a_status.get("child_sas", [])
               if c.get("peer") == b)


def hub_series(samples: list[list[float]], t_from: float, t_to: float) -> tuple[list[float], list[float]]:
    """Hub branch-to-branch throughput (Mbit/s) over time from cumulative byte samples [t, bytes, pkts]."""
    pts = [s for s in samples if t_from - 1.0 <= s[0] <= t_to + 1.0]
    ts, mbps = [], []
    for (t0, b0, *_), (t1, b1, *_) in zip(pts, pts[1:]):
        if t1 > t0:
            ts.append(round(t1 - t_from, 3))
            mbps.append(max(0.0, (b1 - b0) * 8 / (t1 - t0) / 1e6))
    return ts, mbps


def iperf_figures(result: dict[str, Any], udp: bool) -> dict[str, Any]:
    """What the report needs from one iperf3 -J client result (with --get-server-output)."""
    end = result.get("end") or {}
    out: dict[str, Any] = {"error": result.get("error")}
    if udp:
        # iperf3 3.12 puts the receiver's view in end.sum_received and per stream in end.streams[].udp
        s, recv = end.get("sum") or {}, end.get("sum_received") or {}
        server = ((result.get("server_output_json") or {}).get("end") or {}).get("sum") or {}
        streams = [st.get("udp") or {} for st in end.get("streams") or []]
        ooo = [st["out_of_order"] for st in streams if "out_of_order" in st]
        out.update(bytes=s.get("bytes", 0), mbps=round(s.get("bits_per_second", 0) / 1e6, 2),
                   lost=server.get("lost_packets", recv.get("lost_packets", s.get("lost_packets"))),
                   packets=server.get("packets", recv.get("packets", s.get("packets"))),
                   out_of_order=server.get("out_of_order", sum(ooo) if ooo else None))
    else:
        sent, recv = end.get("sum_sent") or {}, end.get("sum_received") or {}
        out.update(bytes=recv.get("bytes", 0), mbps=round(recv.get("bits_per_second", 0) / 1e6, 2),
                   retransmits=sent.get("retransmits"))
    return out


def share(hub_bytes: int, shortcut: int) -> float | None:
    total = hub_bytes + shortcut
    return None if total == 0 else round(100.0 * hub_bytes / total, 3)
