"""Status codec and member pool: two members in memory, forged and replayed messages dropped."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vpnlab_agent.cluster.status import (
    MAC_LEN,
    MemberPool,
    MemberStatus,
    StatusError,
    decode_status,
    encode_status,
    next_status,
    status_key,
)

KEY = status_key(b"cluster secret", "lb")
T0 = 1_800_000_000.0
MEMBERS = frozenset({"gw1", "gw2", "gw3"})


def gw(name: str = "gw2", **kw: object) -> MemberStatus:
    base = MemberStatus(name, "203.0.113.12", active=3, capacity=100, weight=2, available=True, master=False,
                        interval_ms=1000, timestamp_ms=int(T0 * 1000), sequence=7, arrivals=41)
    return dataclasses.replace(base, **kw)


def test_round_trip() -> None:
    st_ = gw(master=True, available=False)
    assert decode_status(encode_status(st_, KEY), KEY) == st_


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=63),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1),
       st.booleans(), st.booleans(), st.integers(1, 2**16 - 1), st.integers(0, 2**63), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1))
def test_round_trip_any(name, active, capacity, weight, avail, master, interval, ts, seq, arrivals) -> None:  # noqa: ANN001
    s = MemberStatus(name, "198.51.100.7", active, capacity, weight, avail, master, interval, ts, seq, arrivals)
    assert decode_status(encode_status(s, KEY), KEY) == s


def test_cluster_keys_differ_per_cluster() -> None:
    assert status_key(b"k", "a") != status_key(b"k", "b")
    with pytest.raises(StatusError) as e:
        decode_status(encode_status(gw(), status_key(b"k", "a")), status_key(b"k", "b"))
    assert e.value.kind == "forged"


@given(st.integers(0, 60), st.integers(0, 255))
def test_any_flipped_byte_is_refused(pos: int, bit: int) -> None:
    data = bytearray(encode_status(gw(), KEY))
    pos %= len(data)
    data[pos] ^= 1 << (bit % 8)
    with pytest.raises(StatusError):
        decode_status(bytes(data), KEY)


@pytest.mark.parametrize("data", [b"", b"VLBS", b"XXXX" + bytes(60), encode_status(gw(), KEY)[:-MAC_LEN]])
def test_malformed(data: bytes) -> None:
    with pytest.raises(StatusError):
        decode_status(data, KEY)


def _pool(own: str = "gw1") -> MemberPool:
    p = MemberPool(own, KEY, MEMBERS)
    p.set_own(gw(own, address="203.0.113.11", active=1))
    return p


def test_two_members_in_memory_see_each_other() -> None:
    a, b = _pool("gw1"), _pool("gw2")
    sa = sb = None
    for i in range(3):
        now = T0 + i
        sa = next_status(sa, gw("gw1", address="203.0.113.11", active=i), now)
        sb = next_status(sb, gw("gw2", active=10 + i), now)
        assert b.receive(encode_status(sa, KEY), now + 0.001) == sa
        assert a.receive(encode_status(sb, KEY), now + 0.001) == sb
    assert sorted(a.alive(T0 + 2.5)) == ["gw1", "gw2"]
    assert a.alive(T0 + 2.5)["gw2"].active == 12
    assert b.alive(T0 + 2.5)["gw1"].active == 2
    assert a.counters.accepted == b.counters.accepted == 3


def test_replayed_message_is_dropped_and_counted() -> None:
    p = _pool()
    msg = encode_status(gw(), KEY)
    assert p.receive(msg, T0) is not None
    assert p.receive(msg, T0 + 0.5) is None
    older = encode_status(gw(sequence=6), KEY)
    assert p.receive(older, T0 + 0.5) is None
    assert p.counters.replayed == 2 and p.counters.accepted == 1


def test_stale_message_is_dropped_even_when_never_seen() -> None:
    p = _pool()
    assert p.receive(encode_status(gw(), KEY), T0 + 60) is None
    assert p.counters.stale == 1 and "gw2" not in p.alive(T0 + 60)


def test_forged_message_is_dropped_and_counted() -> None:
    p = _pool()
    assert p.receive(encode_status(gw(active=0), status_key(b"guess", "lb")), T0) is None
    assert p.counters.forged == 1 and "gw2" not in p.alive(T0)


def test_own_name_and_foreign_names_refused() -> None:
    p = _pool()
    assert p.receive(encode_status(gw("gw1"), KEY), T0) is None
    assert p.receive(encode_status(gw("gw9"), KEY), T0) is None
    assert p.counters.replayed == 1 and p.counters.foreign == 1


def test_restarted_member_is_accepted_with_a_new_sequence() -> None:
    p = _pool()
    assert p.receive(encode_status(gw(sequence=900), KEY), T0) is not None
    assert p.receive(encode_status(gw(sequence=0, timestamp_ms=int(T0 * 1000) + 2000), KEY), T0 + 2) is not None


def test_member_silent_for_three_intervals_leaves_the_pool() -> None:
    p = _pool()
    p.receive(encode_status(gw(interval_ms=500), KEY), T0)
    assert "gw2" in p.alive(T0 + 1.49)
    assert p.next_expiry() == pytest.approx(T0 + 1.5)
    assert "gw2" not in p.alive(T0 + 1.51)
    assert p.counters.left == 1
    assert "gw1" in p.alive(T0 + 100)  # we never leave our own pool


def test_the_former_master_leaves_the_pool_when_we_take_over_and_returns_when_it_speaks() -> None:
    p = _pool()
    p.receive(encode_status(gw("gw2", master=True), KEY), T0)
    p.receive(encode_status(gw("gw3"), KEY), T0)
    assert p.drop_masters() == ["gw2"]
    assert set(p.alive(T0 + 0.1)) == {"gw1", "gw3"}  # no client goes to a dead master meanwhile
    assert p.receive(encode_status(gw("gw2"), KEY), T0 + 0.2) is None  # replay state kept
    assert p.receive(encode_status(gw("gw2", sequence=8), KEY), T0 + 0.2) is not None
    assert "gw2" in p.alive(T0 + 0.3)
