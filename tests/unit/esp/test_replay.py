"""Anti-replay window against a plain set-based model (hypothesis) and its edge cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnlab_agent.esp.replay import ReplayWindow


def test_minimum_size() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(32)


def test_edges() -> None:
    w = ReplayWindow(64)
    assert not w.check(0)
    assert w.check(1)
    w.update(1000)
    assert w.check(1001) and w.check(999) and w.check(1000 - 63)
    assert not w.check(1000 - 64)
    assert not w.check(1000)
    w.update(1000 - 63)
    assert not w.check(1000 - 63)
    w.update(1000 + 500)  # jump beyond the window: everything old is forgotten
    assert not w.check(1000 + 500 - 64)
    assert w.check(1000 + 500 - 63)
    assert w.check(0xFFFFFFFF)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=300), st.sampled_from([64, 128, 1024]))
def test_matches_reference_model(seqs: list[int], size: int) -> None:
    w = ReplayWindow(size)
    seen: set[int] = set()
    top = 0
    for s in seqs:
        fresh = s != 0 and s not in seen and (s > top or top - s < size)
        assert w.check(s) == fresh
        if fresh:
            w.update(s)
            seen.add(s)
            top = max(top, s)
