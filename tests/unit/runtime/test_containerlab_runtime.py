"""The containerlab runtime's command lines, as data (containerlab is not installable here, and a fake
binary would prove nothing), and the one line a user without containerlab gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpnlab.cli import app
from vpnlab.errors import EnvironmentProblem
from vpnlab.runtime import containerlab as clab

REPO = Path(__file__).resolve().parents[3]


def test_deploy_hands_the_exported_file_to_containerlab() -> None:
    f = Path("/var/lib/vpnlab/containerlab/minimal/minimal.clab.yml")
    assert clab.deploy_argv("/usr/bin/containerlab", f) == ["/usr/bin/containerlab", "deploy", "--topo", str(f)]
    assert clab.deploy_argv("containerlab", f, reconfigure=True)[-1] == "--reconfigure"


def test_destroy_finds_the_lab_by_name_and_removes_its_lab_directory() -> None:
    assert clab.destroy_argv("containerlab", "minimal") == ["containerlab", "destroy", "--name", "minimal", "--cleanup"]


def test_each_lab_has_its_own_directory_for_the_exported_files() -> None:
    assert clab.lab_dir("mesh") == Path("/var/lib/vpnlab/containerlab/mesh")


def test_without_the_binary_one_line_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem) as err:
        clab.find_binary(path=str(tmp_path))
    assert "containerlab is not on PATH: install it (https://containerlab.dev/install/, version >= 0.69.0)" in str(err.value)


@pytest.mark.parametrize("command", [["deploy", str(REPO / "topologies" / "minimal.yml")], ["destroy", "minimal"]])
def test_the_cli_says_it_in_one_line_before_needing_root_or_docker(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no containerlab here (nor anywhere on these machines)
    result = CliRunner().invoke(app, [*command, "--runtime", "containerlab"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: containerlab is not on PATH"), result.stderr


def test_destroy_all_is_refused_with_containerlab() -> None:
    result = CliRunner().invoke(app, ["destroy", "--all", "--runtime", "containerlab"])
    assert result.exit_code == 1 and "--all is Docker only" in result.stderr
