"""Generic skips only: a test marked for a capability this machine lacks is skipped with the reason."""

from __future__ import annotations

import functools
import os
import shutil

import pytest


@functools.cache
def _docker_problem() -> str | None:
    try:
        from vpnlab.environment import check_docker

        check_docker()
    except Exception as exc:  # EnvironmentProblem, or the SDK missing
        return str(exc)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    marks = {m.name for m in item.iter_markers()}
    if marks & {"root", "uml", "e2e"} and os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, veths, Docker)")
    if "uml" in marks and shutil.which("linux") is None:
        pytest.skip("user-mode Linux (/usr/bin/linux) is not installed: apt-get install user-mode-linux")
    if "uml" in marks:
        from tests.root.uml import boot_problem

        if (problem := boot_problem()) is not None:
            pytest.skip(problem)
    if "e2e" in marks and (problem := _docker_problem()):
        pytest.skip(problem)
