"""A node's log for `vpnlab logs LAB NODE`: its container's output (the agent writes one line per
event to stdout), or, once a failed deploy has rolled the lab back, the copy that deploy kept.

Errors stay one line and point here instead of quoting log lines; since rollback removes the
containers, a failed deploy first copies the logs of the nodes its error names. Only the newest
KEPT_LABS labs' copies stay: labs with fresh names (tests, scripts) would otherwise pile up for ever.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from vpnlab.errors import LabError
from vpnlab.runtime.base import Runtime, container_name
from vpnlab.topology.schema import NODE_NAME_RE

KEPT_LABS = 20


def kept_dir(lab: str) -> Path:
    return Path(os.environ.get("VPNLAB_LOG_DIR", "/var/log/vpnlab")) / lab


def clear(lab: str) -> None:
    """A new deploy of `lab` starts without the logs an earlier failed one kept."""
    folder = kept_dir(lab)
    for f in folder.glob("*.log") if folder.is_dir() else ():
        f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def keep(rt: Runtime, lab: str, nodes: tuple[str, ...]) -> None:
    try:
        folder = kept_dir(lab)
        folder.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            (folder / f"{node}.log").write_text(rt.logs(container_name(lab, node), None) + "\n")
        labs = sorted((d for d in folder.parent.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        for old in labs[:-KEPT_LABS]:
            clear(old.name)
    except OSError:
        pass  # the deploy's one-line error stands; `vpnlab logs` then says nothing was kept


def read(lab: str, node: str, tail: int | None, rt: Runtime) -> tuple[str, str]:
    """(log text, where it came from)."""
    valid = bool(NODE_NAME_RE.match(node))  # a name no topology allows never reaches the engine or a path
    info = rt.get(container_name(lab, node)) if valid else None
    if info is not None and info.lab == lab and info.node == node:
        return rt.logs(info.name, tail), f"container {info.name} ({info.state})"
    kept = kept_dir(lab) / f"{node}.log"
    if valid and kept.is_file():
        lines = kept.read_text(errors="replace").rstrip("\n").splitlines()
        return "\n".join(lines[-tail:] if tail else lines), f"kept by the failed deploy of {lab} ({kept})"
    nodes = sorted(c.node for c in rt.containers(lab))
    if nodes:
        raise LabError(f"lab {lab} has no node {node!r} (nodes: {', '.join(nodes)})")
    folder = kept_dir(lab)
    kept_nodes = sorted(f.stem for f in folder.glob("*.log")) if folder.is_dir() else []
    if kept_nodes:
        raise LabError(f"lab {lab} is not running; its failed deploy kept the logs of: {', '.join(kept_nodes)}")
    raise LabError(f"no lab {lab} is running, and no failed deploy of it kept logs")
