"""`python3 -m vpnlab_agent run [--config PATH]` and `python3 -m vpnlab_agent ctl ...`.

The agent's command line: the only place in the agent that prints or exits.
  run                         the agent process (the container's main process under docker-init)
  ctl status                  print the agent's status JSON
  ctl summary                 readiness, bring-up phase and one state per configured tunnel
  ctl rekey PEER [--ike]      rekey the child SA (or the IKE SA) with PEER
  ctl initiate PEER | ctl terminate PEER
  ctl retag PEER CONTEXT TAG  fault injection: send CONTEXT's packets to PEER with TAG (hsvpn)
`ctl` exits 0 after printing the JSON result, 1 with one line on stderr when the agent is
unreachable or refuses the request.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from vpnlab_agent import config as node_config
from vpnlab_agent import log

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

# Modules asyncio would import that the agent never uses: it speaks plain UDP, netlink and Unix
# sockets, never TLS. Keeping `ssl` out of sys.modules saves ~0.9 MiB per router container
# (asyncio falls back to ssl = None by itself). Only for `run`: `ctl` and tests keep everything.
UNUSED_MODULES = ("ssl",)


def _trim_imports() -> None:
    for name in UNUSED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # `import ssl` now raises ImportError


# `run`'s options, for argparse and for _run_args() alike: (type, default, help)
RUN_OPTIONS: dict[str, tuple[type, object, str]] = {
    "config": (str, node_config.CONFIG_PATH, "node config JSON"),
    "socket": (str, node_config.CONTROL_SOCKET, "control socket path"),
    "wait": (float, 60.0, "seconds to wait for the config file and the interfaces"),
}


def _run_args(argv: list[str]) -> SimpleNamespace | None:
    """`run` as the container starts it, read without argparse: argparse and gettext are ~0.7 MiB
    of every router agent's memory, for one line the orchestrator wrote. Anything else (help, a
    mistake, `ctl`) is None and goes to argparse, which says what is wrong."""
    if not argv or argv[0] != "run" or len(argv) % 2 == 0:
        return None
    values = {name: default for name, (_, default, _) in RUN_OPTIONS.items()}
    for flag, value in zip(argv[1::2], argv[2::2]):
        name = flag[2:] if flag.startswith("--") else ""
        if name not in RUN_OPTIONS or value.startswith("-"):
            return None
        try:
            values[name] = RUN_OPTIONS[name][0](value)
        except ValueError:
            return None
    return SimpleNamespace(verb="run", **values)


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(prog="python3 -m vpnlab_agent", description="vpnlab router agent")
    sub = parser.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="run the agent")
    for name, (kind, default, text) in RUN_OPTIONS.items():
        run.add_argument(f"--{name}", type=kind, default=default, help=text)
    ctl = sub.add_parser("ctl", help="talk to the running agent")
    ctl.add_argument("--socket", default=node_config.CONTROL_SOCKET, help="control socket path")
    ctl_sub = ctl.add_subparsers(dest="command", required=True)
    ctl_sub.add_parser("status", help="print the status JSON")
    ctl_sub.add_parser("summary", help="print readiness and tunnel states (small, for polling)")
    rekey = ctl_sub.add_parser("rekey", help="rekey the SA with a peer")
    rekey.add_argument("peer")
    rekey.add_argument("--ike", action="store_true", help="rekey the IKE SA instead of the child SA")
    retag = ctl_sub.add_parser("retag", help="fault injection: tag a context's packets to a peer wrongly")
    retag.add_argument("peer")
    retag.add_argument("context")
    retag.add_argument("tag", type=int)
    for verb in ("initiate", "terminate"):
        ctl_sub.add_parser(verb, help=f"{verb} the tunnel with a peer").add_argument("peer")
    return parser


CONFIG_POLL_S = 0.02


def _load_config(path: str, wait: float) -> node_config.NodeConfig:
    """The node config, waiting up to `wait` seconds for it to appear: the orchestrator writes it
    into the running container (whole, by rename), which is cheaper than an archive before start."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return node_config.load(path)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(CONFIG_POLL_S)


def _run(args: Any, services: Callable[[node_config.NodeConfig], list[Any]] | None = None,
         who: str = "vpnlab-agent") -> int:
    """`run`: the agent with the services its config asks for, or with `services(config)` (the
    libreswan image's entry point runs pluto's this way)."""
    _trim_imports()  # before anything imports asyncio
    from vpnlab_agent.netconfig import lighten_pyroute2

    lighten_pyroute2()  # before anything imports pyroute2: ~10 MiB less per router container
    import asyncio

    from vpnlab_agent.agent import Agent  # while the config is being written

    try:
        cfg = _load_config(args.config, args.wait)
    except (OSError, ValueError, TypeError) as exc:
        print(f"{who}: cannot load {args.config}: {exc}", file=sys.stderr)
        return 1
    log.setup(cfg.name)
    agent = Agent(cfg, control_path=args.socket, wait_timeout=args.wait,
                  services=services(cfg) if services else None)
    try:
        return asyncio.run(agent.run())
    except Exception as exc:  # e.g. the control socket cannot be created: one line, exit 1
        logging.getLogger("vpnlab_agent").error("agent failed", exc_info=exc)
        return 1


def _ctl(args: argparse.Namespace) -> int:
    from vpnlab_agent import control

    extra: dict[str, object] = {}
    if args.command not in control.NO_PEER:
        extra["peer"] = args.peer
    if args.command == "rekey":
        extra["what"] = "ike" if args.ike else "child"
    if args.command == "retag":
        extra["context"], extra["tag"] = args.context, args.tag
    try:
        result = control.request(args.socket, args.command, **extra)
    except control.ControlError as exc:
        print(f"vpnlab-agent: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _run_args(sys.argv[1:] if argv is None else argv) or _parser().parse_args(argv)
    return _run(args) if args.verb == "run" else _ctl(args)


if __name__ == "__main__":
    sys.exit(main())
