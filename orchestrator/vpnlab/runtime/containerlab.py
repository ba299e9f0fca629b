"""Deploy and destroy a lab through a `containerlab` binary (subprocess), on this one host.

The lab is exported (vpnlab.export.containerlab) into STATE_DIR/<lab>/ and handed to
`containerlab deploy`; containerlab then owns the lab, and `containerlab destroy` removes it. Its
containers carry vpnlab's labels and names, so `vpnlab inspect` and `vpnlab exec` work on it
through the Docker runtime. The command lines are plain data (deploy_argv, destroy_argv).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vpnlab.errors import EnvironmentProblem, LabError
from vpnlab.progress import ProgressSink

BINARY = "containerlab"
STATE_DIR = Path("/var/lib/vpnlab/containerlab")  # one exported lab per subdirectory
INSTALL_HINT = (
    "containerlab is not on PATH: install it (https://containerlab.dev/install/, version >= {version}), "
    "or deploy with --runtime docker"
)


@dataclass(frozen=True)
class ClabDeployResult:
    lab: str
    topology_file: Path
    containers: int
    seconds: float


def find_binary(path: str | None = None) -> str:
    """The containerlab executable on PATH (or on `path`), or one line saying what to install."""
    from vpnlab.export.containerlab import CLAB_MIN_VERSION

    found = shutil.which(BINARY, path=path)
    if found is None:
        raise EnvironmentProblem(INSTALL_HINT.format(version=CLAB_MIN_VERSION))
    return found


def deploy_argv(binary: str, topology_file: Path, reconfigure: bool = False) -> list[str]:
    argv = [binary, "deploy", "--topo", str(topology_file)]
    if reconfigure:
        argv.append("--reconfigure")  # containerlab removes its own earlier run of this lab first
    return argv


def destroy_argv(binary: str, lab: str) -> list[str]:
    # By name, as vpnlab finds labs by label: works without the file, after a crash too.
    return [binary, "destroy", "--name", lab, "--cleanup"]


def lab_dir(lab: str, state_dir: Path = STATE_DIR) -> Path:
    return state_dir / lab


def deploy(
    topology: str | Path,
    *,
    name: str | None = None,
    reconfigure: bool = False,
    progress: ProgressSink | None = None,
    state_dir: Path = STATE_DIR,
) -> ClabDeployResult:
    """`vpnlab deploy --runtime containerlab`: the file, the binary, the image, the export, then containerlab."""
    from vpnlab import lab as labs
    lab = labs.load_lab(topology, name)  # the file's mistakes first: they need neither root nor Docker
    binary = find_binary()

    from vpnlab.environment import check_docker, check_privileges
    from vpnlab.export.containerlab import export_lab, write_export
    from vpnlab.image import ensure_image

    check_privileges()
    check_docker()
    if lab.name in labs.lab_names():
        if not reconfigure:
            raise LabError(f"lab {lab.name} already exists: `vpnlab destroy {lab.name}` first, or deploy with --reconfigure")
        labs.destroy(lab.name)  # a lab of the Docker runtime; containerlab's own goes with --reconfigure
    image = ensure_image(progress=progress)
    if any(n.implementation == "libreswan" for n in lab.nodes):  # its nodes run an image of their own
        from vpnlab.image_libreswan import ensure_libreswan_image

        ensure_libreswan_image(progress=progress)
    started = time.monotonic()
    files = write_export(export_lab(lab, image), lab_dir(lab.name, state_dir))
    _run(deploy_argv(binary, files[0], reconfigure), f"containerlab deploy of {lab.name}", rollback=destroy_argv(binary, lab.name))
    return ClabDeployResult(lab.name, files[0], len(lab.nodes), time.monotonic() - started)


def destroy(lab: str, *, state_dir: Path = STATE_DIR) -> Path:
    """`containerlab destroy` of the lab, then its exported files; returns where they were."""
    from vpnlab.export.containerlab import remove_export
    from vpnlab.lab import check_lab_name

    check_lab_name(lab)
    binary = find_binary()
    _run(destroy_argv(binary, lab), f"containerlab destroy of {lab}")
    where = lab_dir(lab, state_dir)
    remove_export(where)
    return where


def _run(argv: list[str], what: str, rollback: list[str] | None = None) -> None:
    """Run containerlab with the caller's terminal (its own progress and tables are the output)."""
    try:
        code = subprocess.run(argv, check=False).returncode
    except BaseException as exc:  # Ctrl-C included: undo, then re-raise
        if rollback is not None:
            subprocess.run(rollback, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if isinstance(exc, OSError):
            raise LabError(f"{what}: cannot run {argv[0]}: {exc.strerror or exc}") from None
        raise
    if code != 0:
        if rollback is not None:
            subprocess.run(rollback, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        raise LabError(f"{what} failed (exit code {code}); containerlab's own messages are above")
