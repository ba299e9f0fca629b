"""Environment checks: the messages say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from vpnlab import environment
from vpnlab.errors import EnvironmentProblem


def test_no_engine_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(EnvironmentProblem, match=r"no Docker engine reachable at unix://.*make docker"):
        environment.check_docker()


def test_effective_caps_parsed(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n")
    assert environment.effective_caps(str(status)) == 1 << environment.CAP_NET_ADMIN


def test_unprivileged_user_is_told_to_use_sudo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(environment, "effective_caps", lambda: 0)
    with pytest.raises(EnvironmentProblem, match="root or CAP_NET_ADMIN"):
        environment.check_privileges()


def test_missing_tun_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(environment.os, "geteuid", lambda: 0)
    monkeypatch.setattr(environment, "TUN_DEVICE", tmp_path / "tun")
    with pytest.raises(EnvironmentProblem, match="modprobe tun"):
        environment.check_privileges()
