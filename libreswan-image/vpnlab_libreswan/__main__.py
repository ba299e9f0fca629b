"""`python3 -m vpnlab_libreswan run [--config PATH]`: the agent with LibreswanService as its only
service; `ctl ...` as `python3 -m vpnlab_agent ctl ...` (the same control socket)."""

from __future__ import annotations

import sys
from typing import Any

from vpnlab_agent import __main__ as agent_main
from vpnlab_agent.config import NodeConfig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = agent_main._run_args(argv)
    if args is None:
        return agent_main.main(argv)  # ctl, help and mistakes: the agent's own command line

    def pluto(cfg: NodeConfig) -> list[Any]:
        from vpnlab_libreswan.service import LibreswanService

        return [LibreswanService(cfg)]

    return agent_main._run(args, services=pluto, who="vpnlab-libreswan")


if __name__ == "__main__":
    sys.exit(main())
