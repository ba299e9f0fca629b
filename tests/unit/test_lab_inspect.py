"""inspect_lab: a node whose agent cannot be asked is one line of problem, not a traceback."""

from __future__ import annotations

import pytest

from vpnlab import lab as labs
from vpnlab.runtime.base import ContainerInfo


class _Runtime:
    def containers(self, lab: str | None = None) -> list[ContainerInfo]:
        return [ContainerInfo("vpnlab-t-br1", "id", "t", "br1", "branch", "agent", "/proc/1/ns/net", "running", 1)]

    def labels(self, name: str) -> dict[str, str]:
        return {}


def test_an_agent_that_does_not_answer_is_one_line_of_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(c: ContainerInfo) -> dict:
        raise OSError("control socket refused\nsecond line nobody needs")

    monkeypatch.setattr(labs, "netns_exists", lambda ns: True)
    monkeypatch.setattr(labs, "interface_addresses", lambda path: {})
    monkeypatch.setattr(labs, "missing_interfaces", lambda c, records: [])
    monkeypatch.setattr(labs, "agent_summary", silent)
    view = labs.inspect_lab("t", runtime=_Runtime())  # type: ignore[arg-type]
    (node,) = view.nodes
    assert node.problem == "control socket refused"
