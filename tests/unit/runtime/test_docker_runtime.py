"""The Docker runtime without an engine: engine failures."""

from __future__ import annotations


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
