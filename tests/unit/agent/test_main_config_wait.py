"""`run` waits for its config file: the Docker runtime writes it into the running container."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vpnlab_agent import __main__ as main
from vpnlab_agent.config import NodeConfig

CONFIG = NodeConfig(lab="t", name="r1", role="branch", implementation="agent", public_address=None, interfaces=()).to_json()


def test_a_config_that_appears_after_start_is_read(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    tmp = tmp_path / ".node.json.tmp"
    tmp.write_text(CONFIG)
    timer = threading.Timer(0.2, tmp.rename, (path,))  # whole, by rename, as the runtime does
    timer.start()
    try:
        assert main._load_config(str(path), wait=30.0).name == "r1"
    finally:
        timer.cancel()


def test_a_config_that_never_comes_is_not_found_after_the_wait(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main._load_config(str(tmp_path / "node.json"), wait=0.1)


def test_a_bad_config_is_not_waited_for(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text('{"lab": "t", "name": "r1", "nonsense": 1}')
    with pytest.raises((ValueError, TypeError)):
        main._load_config(str(tmp_path / "node.json"), wait=3600.0)
