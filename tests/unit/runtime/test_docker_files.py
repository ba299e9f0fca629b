"""The files the Docker runtime puts into a container before it starts (no engine needed)."""

from __future__ import annotations

import io
import tarfile

from vpnlab.runtime.docker import _tar


def test_files_go_in_owner_only_at_their_absolute_path() -> None:
    # The node config holds the lab's pre-shared key: no other user in the container may read it.
    data = _tar({"/etc/vpnlab/node.json": b'{"ike": {"psk": "secret"}}', "/etc/other": b"x"})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["etc/other", "etc/vpnlab/node.json"]  # no parent directories
        assert all(m.mode == 0o600 and m.isfile() for m in members.values())
        extracted = tar.extractfile(members["etc/vpnlab/node.json"])
        assert extracted is not None and extracted.read() == b'{"ike": {"psk": "secret"}}'
