"""The Docker runtime without an engine: files it puts into containers, and engine failures."""

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


def test_an_engine_that_fails_mid_command_is_one_lab_error_line() -> None:
    import pytest
    from docker.errors import APIError, NotFound
    from requests.exceptions import ConnectionError as RequestsConnectionError

    from vpnlab.errors import LabError
    from vpnlab.runtime.docker import DockerRuntime

    class _Api:
        def __init__(self, error: Exception) -> None:
            self.error = error

        def containers(self, **_: object) -> list[dict[str, str]]:
            raise self.error

        def inspect_container(self, name: str) -> dict[str, object]:
            raise self.error

    class _Client:
        def __init__(self, error: Exception) -> None:
            self.api = _Api(error)

    broken = DockerRuntime(client=_Client(APIError("500 Server Error", explanation="engine is shutting down")))  # type: ignore[arg-type]
    with pytest.raises(LabError, match="^listing containers: engine is shutting down$"):
        broken.containers("x")
    gone = DockerRuntime(client=_Client(RequestsConnectionError("Connection aborted.")))  # type: ignore[arg-type]
    with pytest.raises(LabError, match=r"^inspecting container c: Docker engine not answering \(Connection aborted.\)$"):
        gone.get("c")
    assert DockerRuntime(client=_Client(NotFound("no such container"))).get("c") is None  # type: ignore[arg-type]
