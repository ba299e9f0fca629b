"""`python3 -m vpnlab_libreswan run [--config PATH]`: the agent with LibreswanService as its only
service; `ctl ...` as `python3 -m vpnlab_agent ctl ...` (the same control socket)."""

from __future__ import annotations

import asyncio
import logging
import sys

from vpnlab_agent import __main__ as agent_main
from vpnlab_agent import log


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = agent_main._run_args(argv)
    if args is None:
        return agent_main.main(argv)  # ctl, help and mistakes: the agent's own command line
    try:
        cfg = agent_main._load_config(args.config, args.wait)  # written into the running container
    except (OSError, ValueError, TypeError) as exc:
        print(f"vpnlab-libreswan: cannot load {args.config}: {exc}", file=sys.stderr)
        return 1
    log.setup(cfg.name)
    from vpnlab_agent.agent import Agent

    from vpnlab_libreswan.service import LibreswanService

    agent = Agent(cfg, control_path=args.socket, wait_timeout=args.wait, services=[LibreswanService(cfg)])
    try:
        return asyncio.run(agent.run())
    except Exception as exc:
        logging.getLogger("vpnlab_agent").error("agent failed", exc_info=exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
