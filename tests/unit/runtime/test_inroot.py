"""Reaching a socket inside a container's root: symlinks the container plants stay inside it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vpnlab.errors import LabError
from vpnlab.runtime.inroot import socket_in_root


def listen(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    return s


def peer_of(connect_to: str, server: socket.socket) -> bool:
    """True when connecting to `connect_to` reaches `server`."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(connect_to)
        server.settimeout(2)
        conn, _ = server.accept()
        conn.close()
        return True
    finally:
        c.close()


def test_reaches_the_socket_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run" / "vpnlab").mkdir(parents=True)
    with listen(root / "run" / "vpnlab" / "agent.sock") as server:
        with socket_in_root(str(root), "/run/vpnlab/agent.sock") as path:
            assert path.startswith("/proc/self/fd/") and peer_of(path, server)


@pytest.mark.parametrize("link", ["absolute", "dotdot", "dir"])
def test_a_planted_symlink_cannot_lead_outside(tmp_path: Path, link: str) -> None:
    """The container makes its socket path a symlink to a socket of the host: absolute, by '..',
    or by replacing a directory on the way. Resolution stays in its root, so none is reached."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    outside = tmp_path / "host.sock"
    with listen(outside) as host_server:
        if link == "dir":
            os.symlink(str(tmp_path), root / "run" / "vpnlab")
            os.rename(outside, tmp_path / "agent.sock")
        else:
            (root / "run" / "vpnlab").mkdir()
            target = str(outside) if link == "absolute" else "../../../host.sock"
            os.symlink(target, root / "run" / "vpnlab" / "agent.sock")
        # through the host's resolution the link does reach the host's socket ...
        assert peer_of(str(root / "run" / "vpnlab" / "agent.sock"), host_server)
        # ... through the container's root it does not
        with pytest.raises(FileNotFoundError):
            with socket_in_root(str(root), "/run/vpnlab/agent.sock"):
                pass


def test_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "run" / "vpnlab").mkdir(parents=True)
    (tmp_path / "run" / "vpnlab" / "agent.sock").write_text("x")
    with pytest.raises(LabError, match="is not a socket"):
        with socket_in_root(str(tmp_path), "/run/vpnlab/agent.sock"):
            pass
