"""`whack --status` of pluto 4.10 -> the agent's SA lists. Pure: text in, dicts out.

Lines read (pluto prefixes each with "000 " in 4.10):
  "lb": 10.1.0.0/24===198.51.100.12[@br1]...203.0.113.11[@lb]===10.0.0.0/22; erouted; eroute owner: #0
  #1: "lb":4500 STATE_V2_ESTABLISHED_IKE_SA (established IKE SA); REKEY in 14190s; newest; idle;
  #2: "lb":4500 STATE_V2_ESTABLISHED_CHILD_SA (established Child SA); ...; IKE SA #1; idle;
Connection instances ("br1"[1] 198.51.100.12) count as their conn.
"""

from __future__ import annotations

import re
from typing import Any

_PREFIX = re.compile(r"^(?:\d{3} )?")
_CONN = re.compile(
    r'^"(?P<conn>[^"]+)"(?:\[\d+\])?(?: [\d.]+)?: (?P<left_ts>\S+?)===(?P<left>[\d.]+)(?::\d+)?(?:<[^>]*>)?'
    r"\[(?P<left_id>[^\]]*)\].*?\.\.\.(?P<right>[\d.]+|%any)(?::\d+)?(?:<[^>]*>)?\[(?P<right_id>[^\]]*)\]"
    r"(?:===(?P<right_ts>[^;\s]+))?"
)
_STATE = re.compile(
    r'^#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[\d+\])?(?: (?P<addr>[\d.]+))?:(?P<port>\d+) '
    r"(?P<state>STATE_\w+) \((?P<what>[^)]*)\);(?P<rest>.*)$"
)
_PARENT = re.compile(r"IKE SA #(\d+)")


def _lines(text: str) -> list[str]:
    return [_PREFIX.sub("", line).strip() for line in text.splitlines()]


def ike_state(state: str) -> str:
    """pluto's state name in the agent's words: established, or what pluto is doing."""
    if state == "STATE_V2_ESTABLISHED_IKE_SA":
        return "established"
    return state.removeprefix("STATE_").lower()


def parse_status(text: str, peers: list[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]],
                                                     list[dict[str, Any]], list[str]]:
    """(conns by name, IKE SAs, child SAs, the state lines as pluto wrote them)."""
    conns: dict[str, dict[str, Any]] = {}
    ike: dict[int, dict[str, Any]] = {}
    children: list[dict[str, Any]] = []
    raw: list[str] = []
    for line in _lines(text):
        if (m := _CONN.match(line)) and m["conn"] in peers:
            # an instance ("lb"[1]) comes after its template and holds the address really used
            conns[m["conn"]] = {
                "local": m["left"], "remote": m["right"], "local_id": m["left_id"], "remote_id": m["right_id"],
                "local_ts": m["left_ts"], "remote_ts": m["right_ts"],
            }
            continue
        m = _STATE.match(line)
        if m is None:
            continue
        raw.append(line)
        conn = conns.get(m["conn"], {})
        if "CHILD_SA" in m["state"] or m["state"].startswith("STATE_V2_ESTABLISHED_CHILD"):
            parent = _PARENT.search(m["rest"])
            children.append({
                "peer": m["conn"], "state": "installed" if "ESTABLISHED" in m["state"] else m["state"].lower(),
                "serial": int(m["serial"]), "ike_serial": int(parent[1]) if parent else None,
                "local_ts": [conn.get("local_ts")], "remote_ts": [conn.get("remote_ts")],
            })
        else:
            ike[int(m["serial"])] = {
                "peer": m["conn"], "state": ike_state(m["state"]), "pluto_state": m["state"],
                "local": conn.get("local"), "remote": m["addr"] or conn.get("remote"), "port": int(m["port"]),
                "serial": int(m["serial"]), "initiator": None,
            }
    return conns, list(ike.values()), children, raw
