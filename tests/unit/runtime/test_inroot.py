"""Reaching a socket inside a container's root: symlinks the container plants stay inside it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vpnlab.errors import LabError
from vpnlab.runtime.inroot import socket_in_root, write_files_in_root


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


# --- writing files ------------------------------------------------------------------------


def test_files_go_in_owner_only_at_their_path_with_parents_made(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "vpnlab").mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    write_files_in_root(str(root), {"/etc/vpnlab/pki/ca.pem": b"CA", "/etc/vpnlab/node.json": b'{"psk": "s"}',
                                    "/tmp/x": b"x"})
    assert (root / "etc" / "vpnlab" / "node.json").read_bytes() == b'{"psk": "s"}'
    assert (root / "etc" / "vpnlab" / "pki" / "ca.pem").read_bytes() == b"CA"
    # the node config holds the lab's PSK: no other user in the container may read it
    for f in ("etc/vpnlab/node.json", "etc/vpnlab/pki/ca.pem", "tmp/x"):
        assert (root / f).stat().st_mode & 0o777 == 0o600, f
    assert (root / "etc" / "vpnlab" / "pki").stat().st_mode & 0o777 == 0o755
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777  # existing directories keep their mode
    assert sorted(p.name for p in (root / "etc" / "vpnlab").iterdir()) == ["node.json", "pki"]  # no temporary left


def test_a_file_is_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "node.json").write_text("old, longer content")
    write_files_in_root(str(tmp_path), {"/etc/node.json": b"new"})
    assert (tmp_path / "etc" / "node.json").read_bytes() == b"new"


@pytest.mark.parametrize("link", ["absolute", "dotdot"])
def test_a_planted_directory_link_cannot_lead_a_write_outside(tmp_path: Path, link: str) -> None:
    """The link is resolved inside the root (an absolute one as <root>/<its path>, '..' stops at the
    root), where its target does not exist: refused in one line, and the host's directory untouched."""
    root, outside = tmp_path / "root", tmp_path / "host-etc"
    root.mkdir()
    (outside / "vpnlab").mkdir(parents=True)
    os.symlink(str(outside) if link == "absolute" else "../host-etc", root / "etc")
    with pytest.raises(LabError, match=r"^cannot write /etc/vpnlab/node.json in .*: No such file or directory$"):
        write_files_in_root(str(root), {"/etc/vpnlab/node.json": b"secret"})
    assert list((outside / "vpnlab").iterdir()) == []
    # a link to a directory inside the root is followed there
    (root / "host-etc" / "vpnlab").mkdir(parents=True)
    os.unlink(root / "etc")
    os.symlink("/host-etc", root / "etc")
    write_files_in_root(str(root), {"/etc/vpnlab/node.json": b"secret"})
    assert (root / "host-etc" / "vpnlab" / "node.json").read_bytes() == b"secret"
    assert list((outside / "vpnlab").iterdir()) == []


def test_a_planted_file_link_is_replaced_not_followed(tmp_path: Path) -> None:
    (tmp_path / "root" / "etc").mkdir(parents=True)
    target = tmp_path / "host-file"
    target.write_text("host")
    os.symlink(str(target), tmp_path / "root" / "etc" / "node.json")
    write_files_in_root(str(tmp_path / "root"), {"/etc/node.json": b"new"})
    assert target.read_text() == "host" and not (tmp_path / "root" / "etc" / "node.json").is_symlink()


def test_the_host_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="is the host's root, not a container's: nothing written$"):
        write_files_in_root("/", {f"{tmp_path}/x": b"x"})
    assert not (tmp_path / "x").exists()


def test_a_path_that_is_a_file_on_the_way_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("not a directory")
    with pytest.raises(LabError, match=r"^cannot write /etc/vpnlab/node.json in .*: Not a directory$"):
        write_files_in_root(str(tmp_path), {"/etc/vpnlab/node.json": b"x"})
