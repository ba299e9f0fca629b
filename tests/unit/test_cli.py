"""Bad input to the CLI: exit code 1 (2 for usage errors), one line on stderr, no traceback.
None of these reach a Docker engine: names and files are checked first."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpnlab.cli import app

runner = CliRunner()


def _fails_with_one_line(args: list[str], *expected: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", [[], ["deploy"], ["destroy"], ["inspect"], ["exec"], ["graph"], ["image"], ["export"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_deploy_of_a_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    _fails_with_one_line(["deploy", str(missing)], "nope.yml")


def test_deploy_of_a_file_that_is_not_yaml_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n  nodes: {")
    _fails_with_one_line(["deploy", str(bad)], "bad.yml")


def test_deploy_with_an_invalid_lab_name_is_refused() -> None:
    _fails_with_one_line(["deploy", "topologies/minimal.yml", "--name", "Bad_Name"], "invalid lab name", "Bad_Name")


def test_deploy_with_a_lab_name_too_long_for_interface_names_is_refused() -> None:
    _fails_with_one_line(["deploy", "topologies/minimal.yml", "--name", "abcdefghijklm"], "at most 12")


def test_destroy_needs_a_lab_or_all_but_not_both() -> None:
    _fails_with_one_line(["destroy"], "--all")
    _fails_with_one_line(["destroy", "x", "--all"], "not both")


@pytest.mark.parametrize("command", [["destroy", "No_Such"], ["inspect", "UPPER"], ["exec", "a b", "n", "--", "ls"]])
def test_bad_lab_names_are_refused_before_anything_runs(command: list[str]) -> None:
    _fails_with_one_line(command, "invalid lab name")


def test_exec_without_a_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["exec", "lab", "node"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_graph_of_a_missing_file_names_it(tmp_path: Path) -> None:
    _fails_with_one_line(["graph", str(tmp_path / "gone.yml")], "gone.yml")


def test_graph_to_an_unknown_format_is_refused(tmp_path: Path) -> None:
    _fails_with_one_line(["graph", "topologies/minimal.yml", "-o", str(tmp_path / "x.bogus")], "bogus")


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["deplyo"])
    assert result.exit_code == 2


def test_destroy_all_with_a_name_is_refused_not_widened_to_every_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    # Once this destroyed every lab on the machine: --name was ignored next to --all.
    from vpnlab import lab as labs

    def destroy_all() -> None:  # a regression must fail this test, not remove real labs
        raise AssertionError("destroy --all --name reached destroy_all")

    monkeypatch.setattr(labs, "destroy_all", destroy_all)
    _fails_with_one_line(["destroy", "--all", "--name", "x"], "--name", "not with --all")
    _fails_with_one_line(["destroy", "--name", "x"], "--all")


def test_tunnel_lines_keep_every_field_a_narrow_terminal_would_cut() -> None:
    from types import SimpleNamespace

    from vpnlab.cli import _tunnel_lines

    agent = {
        "ike_sas": [{"peer": "hub", "state": "established", "local": "198.51.100.11:4500",
                     "remote": "198.51.100.10:4500", "algorithms": "aes128gcm16-prfsha256-ecp256",
                     "spi_i": "24d0b8e895ea6437", "spi_r": "21d473e896dbefca", "age_s": 71}],
        "child_sas": [{"peer": "hub", "state": "installed", "local_ts": ["10.1.0.0/24"],
                       "remote_ts": ["10.0.0.0/24", "10.2.0.0/24"], "algorithm": "aes-gcm-16-128",
                       "spi_in": "5620bcc4", "spi_out": "38543e00", "bytes_in": 1500, "packets_in": 3,
                       "bytes_out": 0, "packets_out": 0, "age_s": 5},
                      {"peer": "other", "local_ts": ["10.9.0.0/24"], "remote_ts": []}],
    }
    lines = _tunnel_lines(SimpleNamespace(nodes=[SimpleNamespace(name="br1", agent=agent)]))
    assert len(lines) == 2  # the other peer's child is not listed under hub
    assert "br1 → hub  established  198.51.100.11:4500 → 198.51.100.10:4500" in lines[0]
    assert "24d0b8e895ea6437/21d473e896dbefca" in lines[0] and lines[0].endswith("1m11s")
    assert "10.1.0.0/24 ⇄ 10.0.0.0/24, 10.2.0.0/24" in lines[1]
    assert "SPIs 5620bcc4/38543e00" in lines[1] and "in 1.5 kB 3 pkt" in lines[1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["deploy"], "Missing argument"),
        (["deploy", "x.yml", "--bogus"], "No such option: --bogus"),
        (["deploy", "x.yml", "--timeout", "0"], "--timeout"),
        (["deplyo"], "Did you mean 'deploy'?"),
    ],
)
def test_usage_mistakes_are_one_line_pointing_at_help(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "--help" in lines[0]


def test_export_writes_one_file_and_says_how_to_run_it(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "topologies/minimal.yml", "-o", str(tmp_path / "out"), "--image", "vpnlab-node:x"])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'out' / 'minimal.clab.yml'}: 6 nodes, 9 links" in result.stdout
    assert f"containerlab deploy -t {tmp_path / 'out' / 'minimal.clab.yml'}" in result.stdout


def test_export_to_several_hosts_writes_one_file_each(tmp_path: Path) -> None:
    args = ["export", "topologies/bench-20.yml", "-o", str(tmp_path), "--host", "a=192.0.2.1", "--host", "b=192.0.2.2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "for host a (192.0.2.1)" in result.stdout and "for host b (192.0.2.2)" in result.stdout
    assert "1 VXLAN links join the hosts; MTU 1450" in result.stdout
    assert (tmp_path / "a" / "bench20.clab.yml").is_file() and (tmp_path / "b" / "bench20.clab.yml").is_file()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--format", "gns3"], "unknown --format 'gns3' (formats: containerlab)"),
        (["--host", "a"], "--host: a: expected NAME=ADDRESS"),
        (["--host", "a=192.0.2.1", "--placement", "p.yml"], "not both"),
        (["--placement", "/nonexistent/p.yml"], "/nonexistent/p.yml: file not found"),
    ],
)
def test_export_mistakes_are_one_line(tmp_path: Path, extra: list[str], expected: str) -> None:
    _fails_with_one_line(["export", "topologies/minimal.yml", "-o", str(tmp_path / "o"), *extra], expected)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_a_large_lab_is_one_row_per_node_then_totals_and_what_is_not_up() -> None:
    from rich.console import Console

    from vpnlab.cli import _lab_table, _summary_lines
    from vpnlab.lab import LabView, NodeView

    def router(name: str, tunnels: dict[str, str], ready: bool = True) -> NodeView:
        summary = {"ready": ready, "phase": "running" if ready else "starting ike", "dataplane": "userspace",
                   "tunnels": tunnels, "ike_sas": len(tunnels), "child_sas": 1, "half_open": 0, "errors": []}
        return NodeView(name, "branch", "agent", f"vpnlab-big-{name}", "running",
                        {"wan0": ["198.51.100.11/24"], "lan0": ["10.1.0.1/24"]}, summary=summary)

    nodes = [router("hub", {f"b{i}": "up" for i in range(1, 41)} | {"b7": "connecting"})]
    nodes += [router(f"b{i}", {"hub": "up" if i != 7 else "down"}, ready=i != 7) for i in range(1, 41)]
    view = LabView("big", "", "vpnlab-big", True, nodes, detail=False)
    console = Console(width=200, record=True)
    console.print(_lab_table(view))
    text = console.export_text()
    assert len(text.splitlines()) < 50  # one line per node: the LAN address lines are left out
    assert "40/40" not in text and "39/40" in text and "0/1" in text
    lines = _summary_lines(view)
    assert lines[0] == "40 of 41 routers ready; 78 of 80 tunnel ends up; 0 half-open IKE SAs"
    assert lines[1] == "not up: b7→hub (down), hub→b7 (connecting)"
    assert lines[-1] == "one router in full (tunnels, selectors, SPIs, mesh): vpnlab inspect big NODE"
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["restart", "Bad_Lab", "br1"], "invalid lab name 'Bad_Lab'"),
        (["stop", "Bad_Lab", "br1"], "invalid lab name 'Bad_Lab'"),
        (["start", "Bad_Lab", "br1"], "invalid lab name 'Bad_Lab'"),
        (["link", "down", "Bad_Lab", "br1"], "invalid lab name 'Bad_Lab'"),
        (["link", "show", "Bad_Lab"], "invalid lab name 'Bad_Lab'"),
        (["link", "set", "nolab", "br1", "wan0", "--mtu", "100"], "link: bad MTU 100 (use 576 to 9000)"),
    ],
)
def test_lifecycle_and_link_verbs_refuse_bad_names_in_one_line(args: list[str], expected: str) -> None:
    _fails_with_one_line(args, expected)
