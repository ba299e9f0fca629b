"""The userspace engine's SA table, without root: which SA carries an inner packet, preference among
equal selectors, fallback when the preferred SA goes, make-before-break, inbound selector checks,
lifetime events."""

from __future__ import annotations

import dataclasses
import ipaddress
import os

from vpnlab_agent.dataplane.sa_table import NO_ROUTE, POLICY, Entry, SaTable, make_entry
from vpnlab_agent.sa import ChildSA, EspAlgorithm

GCM = EspAlgorithm("aes-gcm-16", 128)
_spi = iter(range(0x1000, 0x100000))


def sa(name: str, remote_ts: tuple[str, ...], *, local_ts: tuple[str, ...] = ("10.1.0.0/24",), reqid: int = 0,
       preference: int = 0, soft: int = 0, hard: int = 0) -> ChildSA:
    return ChildSA(name, reqid or next(_spi), next(_spi), next(_spi), GCM, os.urandom(20), os.urandom(20), b"", b"",
                   "198.51.100.1", f"198.51.100.{len(name) + 10}", 4500, 4500, local_ts, remote_ts,
                   soft_lifetime_bytes=soft, hard_lifetime_bytes=hard, preference=preference)


def key(src: str, dst: str) -> int:
    return int(ipaddress.IPv4Address(src)) << 32 | int(ipaddress.IPv4Address(dst))


def install(table: SaTable, *sas: ChildSA) -> None:
    for s in sas:
        table.add(make_entry(s, lambda: 1.0, os.urandom))


def carrier(table: SaTable, src: str, dst: str) -> object:
    got = table.route(key(src, dst))
    return got.sa.name if isinstance(got, Entry) else got


def test_longest_prefix_wins_whatever_the_preference() -> None:
    t = SaTable()
    install(t, sa("hub", ("10.0.0.0/8",), preference=100), sa("br2", ("10.2.0.0/24",)))
    assert carrier(t, "10.1.0.5", "10.2.0.9") == "br2"
    assert carrier(t, "10.1.0.5", "10.3.0.9") == "hub"
    assert carrier(t, "10.1.0.5", "192.0.2.1") is NO_ROUTE


def test_same_selectors_preferred_sa_wins_and_traffic_falls_back_when_it_goes() -> None:
    t = SaTable()
    hub = sa("hub", ("10.2.0.0/24", "10.3.0.0/24"))
    shortcut = sa("shortcut", ("10.2.0.0/24",), preference=10)
    install(t, hub, shortcut)
    assert carrier(t, "10.1.0.5", "10.2.0.9") == "shortcut"
    assert carrier(t, "10.1.0.5", "10.3.0.9") == "hub"
    assert t.remote_prefixes() == ["10.2.0.0/24", "10.3.0.0/24"]
    t.remove(shortcut.spi_in)
    assert carrier(t, "10.1.0.5", "10.2.0.9") == "hub"  # the memo was dropped with the change
    assert t.remote_prefixes() == ["10.2.0.0/24", "10.3.0.0/24"]  # the route stays for the hub


def test_order_of_installation_does_not_beat_preference_and_breaks_ties() -> None:
    t = SaTable()
    low, high, tie = sa("low", ("10.2.0.0/24",)), sa("high", ("10.2.0.0/24",), preference=5), sa("tie", ("10.2.0.0/24",))
    install(t, high, low, tie)
    assert carrier(t, "10.1.0.5", "10.2.0.9") == "high"
    t.remove(high.spi_in)
    assert carrier(t, "10.1.0.5", "10.2.0.9") == "low"  # equal preference: the earlier installed


def test_both_selectors_must_match_else_a_policy_drop() -> None:
    t = SaTable()
    # the preferred SA covers dst but not this source: the other SA, which covers both, carries it
    install(t, sa("voice", ("10.2.0.0/24",), local_ts=("10.9.0.0/24",), preference=10), sa("hub", ("10.2.0.0/24",)))
    assert carrier(t, "10.1.0.5", "10.2.0.9") == "hub"
    assert carrier(t, "10.9.0.5", "10.2.0.9") == "voice"
    assert carrier(t, "10.7.0.5", "10.2.0.9") is POLICY


def test_rekey_moves_outbound_at_once_and_back_if_the_new_sa_goes() -> None:
    t = SaTable()
    old = sa("br2", ("10.2.0.0/24",), reqid=7)
    new = dataclasses.replace(old, spi_in=next(_spi), spi_out=next(_spi))
    install(t, old)
    first = t.route(key("10.1.0.5", "10.2.0.9"))
    install(t, new)
    moved = t.route(key("10.1.0.5", "10.2.0.9"))
    assert first.sa.spi_in == old.spi_in and moved.sa.spi_in == new.spi_in
    assert set(t.inbound) == {old.spi_in, new.spi_in}  # the old one still accepts
    t.remove(new.spi_in)
    assert t.route(key("10.1.0.5", "10.2.0.9")).sa.spi_in == old.spi_in


def test_inbound_accepts_only_the_sas_own_selectors() -> None:
    t = SaTable()
    s = sa("br2", ("10.2.0.0/24",))
    install(t, s)
    entry = t.inbound[s.spi_in]
    assert t.accepts(entry, key("10.2.0.9", "10.1.0.5"))
    assert not t.accepts(entry, key("10.3.0.9", "10.1.0.5"))  # a source the peer did not negotiate
    assert not t.accepts(entry, key("10.2.0.9", "10.7.0.5"))
    assert entry.in_cache == {key("10.2.0.9", "10.1.0.5"): True, key("10.3.0.9", "10.1.0.5"): False,
                              key("10.2.0.9", "10.7.0.5"): False}


def test_lifetime_fires_soft_then_hard_once_each() -> None:
    events: list[tuple[int, bool]] = []
    t = SaTable(lambda spi, hard: events.append((spi, hard)))
    s = sa("br2", ("10.2.0.0/24",), soft=100, hard=200)
    install(t, s)
    e = t.inbound[s.spi_in]
    e.counters.bytes_out = 150
    t.lifetime(e)
    t.lifetime(e)
    assert events == [(s.spi_in, False)] and e.next_limit == 200 and not e.expired
    e.counters.bytes_in = 60
    t.lifetime(e)
    t.lifetime(e, exhausted=True)
    assert events == [(s.spi_in, False), (s.spi_in, True)] and e.expired


def test_last_inbound_is_per_inbound_spi_and_only_for_installed_sas() -> None:
    table = SaTable()
    a, b = sa("a", ("10.2.0.0/24",)), sa("b", ("10.3.0.0/24",))
    install(table, a, b)
    out = make_entry(dataclasses.replace(a, spi_out=a.spi_in, enc_key_out=a.enc_key_in), lambda: 1.0, os.urandom)
    pkt = out.out.encapsulate(bytes.fromhex("4500001c00010000401100000a0200010a010001") + bytes(8))
    table.entries[a.spi_in].inb.decapsulate(pkt)
    assert table.last_inbound() == {a.spi_in: 1.0, b.spi_in: 0.0}
    table.remove(a.spi_in)
    assert table.last_inbound() == {b.spi_in: 0.0}
