"""`vpnlab inspect LAB`: the gateway-cluster table from the members' status reports."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from vpnlab.inspect_clusters import clusters_table


def node(name: str, vrrp: str, own: int, members: dict | None = None) -> SimpleNamespace:
    cluster = {"cluster": "lb", "vrrp": vrrp, "members": members or {},
               "status_messages": {"accepted": 40, "forged": 1, "replayed": 2}}
    sas = [{"state": "established"}] * own + [{"state": "half-open"}]
    return SimpleNamespace(name=name, agent={"services": {"cluster": cluster}, "ike_sas": sas})


def test_rows_per_member_with_the_masters_view() -> None:
    seen = {"gw1": {"in_pool": True, "active": 5, "pending": 1, "redirects": 7},
            "gw2": {"in_pool": False}}
    view = SimpleNamespace(nodes=[node("gw1", "MASTER", 5, seen), node("gw2", "BACKUP", 3),
                                  SimpleNamespace(name="br1", agent={"services": {}})])
    table = clusters_table(view)
    assert table is not None
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "gw1" in text and "MASTER" in text and "5 (+1 pending)" in text and "40/1/2" in text
    gw2 = next(line for line in text.splitlines() if " gw2 " in line)
    assert "BACKUP" in gw2 and " 3 " in gw2


def test_no_cluster_no_table() -> None:
    assert clusters_table(SimpleNamespace(nodes=[SimpleNamespace(name="hub", agent={})])) is None


def test_a_member_left_out_for_missed_clients_says_so() -> None:
    seen = {"gw1": {"in_pool": True, "active": 5, "pending": 0, "redirects": 7},
            "gw2": {"in_pool": True, "active": 2, "pending": 0, "redirects": 4, "missed": 4, "shunned_s": 8.5}}
    view = SimpleNamespace(nodes=[node("gw1", "MASTER", 5, seen), node("gw2", "BACKUP", 2)])
    console = Console(width=240, record=True)
    console.print(clusters_table(view))
    gw2 = next(line for line in console.export_text().splitlines() if " gw2 " in line)
    assert "left out 8.5s (4 missed)" in gw2
