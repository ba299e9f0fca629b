"""inspect's routing-contexts table, from agent status as the contexts service reports it."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from vpnlab.inspect_contexts import contexts_table


def node(name: str, contexts: dict | None) -> SimpleNamespace:
    return SimpleNamespace(name=name, agent={"services": {"contexts": contexts}} if contexts else {"services": {}})


def test_no_contexts_no_table() -> None:
    assert contexts_table(SimpleNamespace(nodes=[node("hub", None)])) is None


def test_per_context_rows_with_tagged_sa_counters() -> None:
    st = {"method": "hsvpn", "mode": "rules", "contexts": [
        {"name": "corp", "table": 101, "lans": ["10.1.0.0/24"], "device": "t-corp", "bytes_in": 2_500_000,
         "packets_in": 2000, "bytes_out": 900, "packets_out": 9, "peers": ["br1"],
         "sas": [{"peer": "br1", "tag": 1, "packets_in": 1990, "packets_out": 8}]},
        {"name": "guest", "table": 103, "lans": ["10.1.0.0/24"], "device": "t-guest", "peers": ["br1"], "sas": []},
    ]}
    console = Console(width=160, record=True)
    console.print(contexts_table(SimpleNamespace(nodes=[node("hub", st), node("hub-corp1", None)])))
    text = console.export_text()
    for want in ("routing contexts (hsvpn)", "hub (rules)", "corp", "101", "t-corp", "2.5 MB", "br1 tag 1: 1990/8 pkts",
                 "guest", "103"):
        assert want in text, want
