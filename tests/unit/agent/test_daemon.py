"""Daemon: a third-party child (charon, pluto, keepalived) whose output becomes our log lines."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from vpnlab_agent.daemon import MAX_LOG_LINE, Daemon


def _logged(caplog: pytest.LogCaptureFixture, name: str, scenario) -> list[str]:
    logger = logging.getLogger("vpnlab_agent")
    propagate, logger.propagate = logger.propagate, True  # log.setup() may have turned it off
    try:
        with caplog.at_level(logging.INFO, logger=f"vpnlab_agent.{name}"):
            asyncio.run(scenario())
    finally:
        logger.propagate = propagate
    return [r.getMessage() for r in caplog.records if r.name == f"vpnlab_agent.{name}"]


def test_the_line_after_an_overlong_one_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    script = f"import sys; sys.stdout.write('x' * {MAX_LOG_LINE * 2} + '\\n' + 'next line\\n')"
    d = Daemon("charon")

    async def scenario() -> None:
        await d.start(sys.executable, "-c", script)
        await asyncio.wait_for(d._pump, 10)  # type: ignore[arg-type]

    lines = _logged(caplog, "charon", scenario)
    assert "next line" in lines
    assert not any(len(line) > MAX_LOG_LINE for line in lines)


def test_an_exit_nobody_asked_for_is_an_error_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    codes: list[int] = []
    d = Daemon("keepalived", on_exit=codes.append)

    async def scenario() -> None:
        await d.start(sys.executable, "-c", "print('bye'); raise SystemExit(3)")
        await asyncio.wait_for(d._pump, 10)  # type: ignore[arg-type]

    lines = _logged(caplog, "keepalived", scenario)
    assert lines[0] == "bye" and codes == [3] and d.errors == ["keepalived exited with code 3"]
    assert not d.running and d.returncode == 3


def _ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (15 - 1)))


def test_stop_terminates_then_kills_and_is_no_error() -> None:
    d = Daemon("pluto", on_exit=lambda code: pytest.fail("stop is not an unexpected exit"))
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"

    async def scenario() -> int | None:
        await d.start(sys.executable, "-c", stubborn)
        proc = d._proc
        assert proc is not None
        while not _ignores_sigterm(proc.pid):  # the child is past its signal() call
            await asyncio.sleep(0.01)
        await asyncio.wait_for(d.stop(0.3), 10)
        return proc.returncode

    assert asyncio.run(scenario()) == -9 and d.errors == [] and d.pid is None
