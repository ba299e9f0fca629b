"""`python3 -m vpnlab_agent run ...` as the container starts it is read without argparse; anything
else still goes through argparse (help, mistakes, ctl)."""

from __future__ import annotations

import subprocess
import sys

from vpnlab_agent import __main__ as main
from vpnlab_agent.config import CONFIG_PATH, CONTROL_SOCKET


def test_the_container_command_line() -> None:
    args = main._run_args(["run"])
    assert args is not None and (args.verb, args.config, args.socket, args.wait) == ("run", CONFIG_PATH, CONTROL_SOCKET, 60.0)
    args = main._run_args(["run", "--config", "/x.json", "--wait", "2.5", "--socket", "/s"])
    assert args is not None and (args.config, args.wait, args.socket) == ("/x.json", 2.5, "/s")


def test_anything_else_is_left_to_argparse() -> None:
    for argv in (["run", "--help"], ["run", "--wait", "soon"], ["run", "--config"], ["run", "--nope", "1"],
                 ["ctl", "status"], [], ["run", "--config", "--wait"]):
        assert main._run_args(argv) is None, argv


def test_run_does_not_import_argparse_and_a_mistake_still_gets_argparses_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = ("import sys; from vpnlab_agent import __main__ as m; m._run_args(['run', '--config', 'x']); "
            "print('argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    bad = subprocess.run([sys.executable, "-m", "vpnlab_agent", "run", "--wait", "soon"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "invalid float value: 'soon'" in bad.stderr
