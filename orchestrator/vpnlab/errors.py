"""Exceptions the library raises; only cli.py turns them into a message and an exit code.

    VpnlabError
    ├── TopologyError      bad topology file: names the file, the node or field, and the problem
    ├── EnvironmentProblem no Docker engine, not root, missing kernel feature: says what to do
    ├── ImageError         building the node image failed
    ├── LabError           deploy/destroy/exec failed at run time
    └── ExportError        `vpnlab export` cannot build or write the files (output directory, VNIs)
"""

from __future__ import annotations


class VpnlabError(Exception):
    """Base of every error vpnlab reports to the user as one line."""


class TopologyError(VpnlabError):
    def __init__(self, file: str, where: str, problem: str) -> None:
        self.file, self.where, self.problem = file, where, problem
        super().__init__(f"{file}: {where}: {problem}" if where else f"{file}: {problem}")


class EnvironmentProblem(VpnlabError):
    pass


class ImageError(VpnlabError):
    pass


class LabError(VpnlabError):
    pass


class ExportError(VpnlabError):
    pass


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type): what a one-line error quotes."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
