"""`vpnlab measure` wiring: the group is registered and mistakes are one line, before any Docker."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from vpnlab.cli import app

TOPO = str(Path(__file__).resolve().parents[3] / "topologies" / "mesh.yml")


def test_measure_group_is_registered() -> None:
    r = CliRunner().invoke(app, ["measure", "--help"])
    assert r.exit_code == 0 and "hub-traffic" in r.output and "shortcuts" in r.output


def test_bad_pairs_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["measure", "hub-traffic", TOPO, "--pairs", "br1:hub",
                                 "--json", str(tmp_path / "x.json"), "--png", str(tmp_path / "x.png")])
    assert r.exit_code == 1
    assert "error: --pairs: 'hub' is not a branch with a host" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x.json").exists()


def test_bad_only(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["measure", "hub-traffic", TOPO, "--only", "maybe"])
    assert r.exit_code == 1 and "--only" in r.output
