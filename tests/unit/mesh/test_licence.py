from __future__ import annotations

import pytest

from vpnlab_agent.mesh.licence import CATEGORIES, HUB_CAP, LicenceError, mesh_limit


def test_seed_table_defaults() -> None:
    assert mesh_limit("branch") == 50  # CPE 19xx
    assert mesh_limit("branch", "cpe-88x") == 6
    assert mesh_limit("branch", "cpe-179x") == 10
    assert mesh_limit("branch", "cpe-19xx-vpn100") == 200
    assert mesh_limit("hub") == 200
    assert {c.mesh_tunnels for c in CATEGORIES.values() if c.hub_side} == {200}


def test_max_tunnels_overrides_but_hub_side_is_capped() -> None:
    assert mesh_limit("branch", "cpe-88x", 2) == 2
    assert mesh_limit("branch", "cpe-88x", 500) == 500
    assert mesh_limit("hub", None, 500) == HUB_CAP
    assert mesh_limit("branch", "isg-8000", 999) == HUB_CAP


def test_unknown_device() -> None:
    with pytest.raises(LicenceError, match="known: cpe-88x"):
        mesh_limit("branch", "r2d2")
