"""`vpnlab measure contexts`: the seed's formulas, the capture parser, the table (no lab)."""

from __future__ import annotations

import struct
from pathlib import Path

from rich.console import Console

from vpnlab.measure.cli import contexts_table
from vpnlab.measure.contexts import _Capture, formulas


def test_formulas_follow_the_seed() -> None:
    f = formulas(3, 3)
    assert f["hsvpn"] == {"ike_sas": 3, "child_sas": 3, "inner_tunnels": 0}
    assert f["tunnel-in-tunnel"] == {"ike_sas": 3, "child_sas": 3, "inner_tunnels": 9}
    assert f["per-network"] == {"ike_sas": 9, "child_sas": 9, "inner_tunnels": 0}


def test_capture_reads_ipv4_lengths_from_pcap(tmp_path: Path) -> None:
    cap = _Capture("x", "")
    frames = []
    for length in (1100, 84):
        eth = b"\x00" * 12 + b"\x08\x00"
        ip = bytes([0x45, 0]) + struct.pack("!H", length) + b"\x00" * 16
        frames.append(eth + ip)
    raw = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 1)
    for f in frames:
        raw += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    Path(cap.path).write_bytes(raw)
    assert cap.ip_lengths() == [1100, 84]


def test_table_has_every_figure() -> None:
    run = {
        "counts": {"ike_sas": 3, "child_sas": 3, "inner_tunnels": 9}, "mtu_inner": 1368, "overhead_bytes": 122,
        "throughput_mbps": {"corp": 50.0, "guest": 40.0}, "throughput_total_mbps": 90.0, "all_up_s": 9.5,
        "recovery_s": 3.2, "rekeys_per_hour": 3.8, "rekey_all": {"messages": 12, "bytes": 4000, "agent_cpu_s": 0.2},
    }
    result = {"sites": 3, "contexts": 3, "formulas": formulas(3, 3), "runs": {"tunnel-in-tunnel": run}}
    console = Console(width=120, record=True)
    console.print(contexts_table(result))
    text = console.export_text()
    for want in ("9 (9)", "1368 B", "122 B", "TCP corp", "90 Mbit/s", "9.5 s", "3.2 s", "4000", "200 ms"):
        assert want in text, want


def test_cli_refuses_an_unknown_method_in_one_line() -> None:
    from typer.testing import CliRunner

    from vpnlab.cli import app

    r = CliRunner().invoke(app, ["measure", "contexts", "topologies/hsvpn.yml", "--methods", "gre"])
    assert r.exit_code != 0
    assert "--methods: unknown gre (choose from hsvpn, tunnel-in-tunnel, per-network)" in r.output
    assert "Traceback" not in r.output


def test_the_rekey_line_is_valid_shell_and_rekeys_every_peer(tmp_path: Path) -> None:
    import subprocess

    from vpnlab.measure.contexts import rekey_script

    script = rekey_script(["hub.corp", "hub.voice"], ike=True)
    assert script.count("ctl rekey hub.") == 2 and script.count("--ike") == 2
    # with python3 standing in for the agent's CLI, the line runs and both commands are started
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n")
    fake.chmod(0o755)
    r = subprocess.run(["sh", "-c", script], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted((tmp_path / "calls").read_text().split("\n")[:2]) == [
        "-m vpnlab_agent ctl rekey hub.corp --ike", "-m vpnlab_agent ctl rekey hub.voice --ike"]
