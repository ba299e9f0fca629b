"""The Docker runtime, through the Docker SDK. Containers get no Docker network (network_mode
none): every interface is a veth that the fabric moves in."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO

import docker
from docker.errors import APIError, DockerException, NotFound
from requests.exceptions import RequestException

from vpnlab.errors import LabError, one_line
from vpnlab.kinds.base import ContainerSpec
from vpnlab.runtime.base import (
    LABEL_KIND,
    LABEL_LAB,
    LABEL_NODE,
    LABEL_ROLE,
    LABEL_TOPOLOGY,
    ContainerInfo,
    ExecResult,
)
from vpnlab.runtime.inroot import write_files_in_root

POOL_SIZE = 16  # > the deploy thread pool, so concurrent calls do not queue on HTTP connections
INSPECT_WORKERS = 8


class DockerRuntime:
    def __init__(self, client: docker.DockerClient | None = None) -> None:
        try:
            self._client = client or docker.from_env(max_pool_size=POOL_SIZE)
        except DockerException as e:
            from vpnlab.environment import check_docker

            check_docker()  # raises the one "no Docker engine ... start dockerd" message
            raise LabError(f"cannot reach the Docker engine: {e}") from e

    @property
    def client(self) -> docker.DockerClient:
        return self._client

    def start(self, name: str, image: str, spec: ContainerSpec, labels: dict[str, str]) -> ContainerInfo:
        # The low-level calls: the SDK's containers.create() inspects the new container once more
        # only to wrap it, and a deploy of 200 branches does this 200 times on a busy engine.
        api = self._client.api
        try:
            host_config = api.create_host_config(
                network_mode="none",
                cap_add=list(spec.cap_add),
                devices=[f"{d}:{d}:rwm" for d in spec.devices],
                sysctls=dict(spec.sysctls),
                init=True,
            )
            created = api.create_container(
                image,
                command=list(spec.command),
                name=name,
                hostname=spec.node,
                labels=labels,
                environment=dict(spec.env),
                host_config=host_config,
                detach=True,
            )
            api.start(created["Id"])
        except APIError as e:
            raise LabError(f"container {name}: {_api_message(e)}") from e
        info = self.get(name)
        if info is None or info.pid == 0:
            last = self.logs(name, 1).strip()
            said = f" (last line: {' '.join(last.split())[:160]})" if last else ""
            raise LabError(f"container {name} stopped right after start{said}")
        if spec.files:
            # Into the running container's root from here, not by put_archive before start: the
            # engine extracts an archive in a re-executed dockerd (~80 ms of CPU per container,
            # ~16 CPU-s of a 200-branch deploy). The agent waits for its config (written last).
            write_files_in_root(f"/proc/{info.pid}/root", spec.files, FILE_MODE)
        return info

    def containers(self, lab: str | None = None) -> list[ContainerInfo]:
        label = f"{LABEL_LAB}={lab}" if lab else LABEL_LAB
        with _engine_errors("listing containers"):
            found = self._client.api.containers(all=True, filters={"label": label})
        # One inspect per container (the listing has no pid): in parallel, a 200-branch lab's
        # 400 inspects would otherwise take seconds of every inspect and destroy.
        if len(found) > 1:
            with ThreadPoolExecutor(max_workers=INSPECT_WORKERS, thread_name_prefix="vpnlab-inspect") as pool:
                got = list(pool.map(lambda c: self.get(c["Id"]), found))
        else:
            got = [self.get(c["Id"]) for c in found]
        return sorted((i for i in got if i is not None), key=lambda i: (i.lab, i.name))

    def get(self, name: str) -> ContainerInfo | None:
        try:
            with _engine_errors(f"inspecting container {name}"):
                data = self._client.api.inspect_container(name)
        except NotFound:
            return None
        labels = data["Config"].get("Labels") or {}
        return ContainerInfo(
            name=data["Name"].lstrip("/"),
            id=data["Id"],
            lab=labels.get(LABEL_LAB, ""),
            node=labels.get(LABEL_NODE, ""),
            role=labels.get(LABEL_ROLE, ""),
            kind=labels.get(LABEL_KIND, ""),
            topology=labels.get(LABEL_TOPOLOGY, ""),
            state=data["State"]["Status"],
            pid=int(data["State"].get("Pid") or 0),
        )

    def remove(self, name: str) -> None:
        try:
            self._client.api.remove_container(name, force=True, v=True)
        except NotFound:
            pass
        except APIError as e:
            if "already in progress" in str(e):
                return  # another destroy is removing it
            raise LabError(f"cannot remove container {name}: {_api_message(e)}") from e

    def stop(self, name: str, timeout: int) -> None:
        with _engine_errors(f"stopping container {name}"):
            self._client.api.stop(name, timeout=timeout)

    def start_existing(self, name: str) -> ContainerInfo:
        with _engine_errors(f"starting container {name}"):
            self._client.api.start(name)
        info = self.get(name)
        if info is None or info.pid == 0:
            raise LabError(f"container {name} stopped right after start: {self.logs(name, 5)!r}")
        return info

    def labels(self, name: str) -> dict[str, str]:
        with _engine_errors(f"inspecting container {name}"):
            data = self._client.api.inspect_container(name)
        return dict(data["Config"].get("Labels") or {})

    def exec_capture(self, name: str, argv: list[str]) -> ExecResult:
        exec_id = self._exec_create(name, argv)
        with _engine_errors(f"exec in {name}"):
            out, err = self._client.api.exec_start(exec_id, demux=True)
            code = self._exit_code(exec_id)
        return ExecResult(exit_code=code, stdout=out or b"", stderr=err or b"")

    def exec_stream(self, name: str, argv: list[str], stdout: BinaryIO, stderr: BinaryIO) -> int:
        exec_id = self._exec_create(name, argv)
        with _engine_errors(f"exec in {name}"):
            for out, err in self._client.api.exec_start(exec_id, stream=True, demux=True):
                if out:
                    stdout.write(out)
                    stdout.flush()
                if err:
                    stderr.write(err)
                    stderr.flush()
            return self._exit_code(exec_id)

    def exec_interactive(self, name: str, argv: list[str]) -> int:
        # A terminal needs a hijacked, raw-mode connection; the docker CLI already does that well.
        docker_cli = shutil.which("docker")
        if docker_cli is None:
            raise LabError("an interactive exec needs the docker CLI (apt-get install docker.io); or pipe the command's input")
        return subprocess.run([docker_cli, "exec", "-it", name, *argv], check=False).returncode

    def logs(self, name: str, tail: int | None = 20) -> str:
        try:
            raw = self._client.api.logs(name, stdout=True, stderr=True, tail="all" if tail is None else tail)
        except (NotFound, APIError):
            return ""
        return raw.decode("utf-8", "replace").rstrip()

    def _exec_create(self, name: str, argv: list[str]) -> str:
        try:
            return self._client.api.exec_create(name, argv, stdout=True, stderr=True, tty=False)["Id"]
        except NotFound as e:
            raise LabError(f"no container {name}") from e
        except APIError as e:
            raise LabError(f"exec in {name}: {_api_message(e)}") from e

    def _exit_code(self, exec_id: str) -> int:
        # The stream can end a moment before Docker records the exit code.
        for _ in range(50):
            data = self._client.api.exec_inspect(exec_id)
            if not data.get("Running") and data.get("ExitCode") is not None:
                return int(data["ExitCode"])
            time.sleep(0.02)
        raise LabError("exec did not report an exit code")


FILE_MODE = 0o600  # node configs carry the lab's PSK; only root (the agent) reads them


@contextmanager
def _engine_errors(what: str) -> Iterator[None]:
    """An engine that fails or goes away mid-command is one LabError line, not a traceback.
    NotFound passes through: callers treat it as an answer."""
    try:
        yield
    except NotFound:
        raise
    except APIError as e:
        raise LabError(f"{what}: {_api_message(e)}") from e
    except (DockerException, RequestException) as e:
        raise LabError(f"{what}: Docker engine not answering ({one_line(e)})") from e


def _api_message(e: APIError) -> str:
    return str(e.explanation or e).strip().splitlines()[0] if (e.explanation or str(e)) else "Docker API error"
