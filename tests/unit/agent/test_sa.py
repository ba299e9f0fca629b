"""ChildSA metadata: the defaults make a plain SA, and metadata survives a replace (rekeys copy it)."""

from __future__ import annotations

import dataclasses

from vpnlab_agent.esp.trailer import RFC4303
from vpnlab_agent.sa import ChildSA, EspAlgorithm


def plain() -> ChildSA:
    return ChildSA("br1", 1, 0x1001, 0x2001, EspAlgorithm("aes-gcm-16", 128), bytes(20), bytes(20), b"", b"",
                   "198.51.100.1", "198.51.100.2", 4500, 4500, ("10.1.0.0/24",), ("10.0.0.0/24",))


def test_plain_sa_defaults() -> None:
    sa = plain()
    assert (sa.preference, sa.context, sa.mark, sa.if_id) == (0, "", 0, 0)
    assert sa.trailer is RFC4303


def test_metadata_is_kept_by_replace() -> None:
    sa = dataclasses.replace(plain(), preference=10, context="voice", mark=0x20, if_id=3)
    new = dataclasses.replace(sa, spi_in=0x1002, spi_out=0x2002)
    assert (new.preference, new.context, new.mark, new.if_id, new.trailer) == (10, "voice", 0x20, 3, RFC4303)
