"""inspect's one line per branch pair that a symmetric NAT keeps on the hub (docs/mesh.md)."""

from __future__ import annotations

from types import SimpleNamespace

from vpnlab.cli import _mesh_pair_lines

LINE = "shortcut br1→br3 not tried: br3 is behind a symmetric NAT (address-and-port-dependent mapping)"


def node(name: str, refused: list) -> SimpleNamespace:
    return SimpleNamespace(name=name, agent={"services": {"mesh": {"enabled": True, "refused": refused}}})


def test_both_ends_record_the_pair_and_inspect_says_it_once() -> None:
    view = SimpleNamespace(nodes=[
        node("br1", [{"peer": "br3", "code": "REQUESTER_SYMMETRIC", "reason": "...", "line": LINE}]),
        node("br3", [{"peer": "br1", "code": "REQUESTER_SYMMETRIC", "reason": "...", "line": LINE},
                     {"peer": "br2", "code": "LIMIT_REACHED", "reason": "mesh tunnel limit reached"}]),
        SimpleNamespace(name="br3-h1", agent=None),
    ])
    assert _mesh_pair_lines(view) == [LINE]
