"""Logging for the agent: one line per event on stdout, `2026-11-25T20:00:00.123Z br1 agent: message`.

The component after the node name is the last part of the logger name below "vpnlab_agent"
(vpnlab_agent.ike.session -> "session"; the package logger itself -> "agent"), or an explicit
`component` passed through `extra` (charon's lines come out as "charon").
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from typing import TextIO

ROOT_LOGGER = "vpnlab_agent"


class LineFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        ms = int(record.msecs)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        component = getattr(record, "component", None) or _component(record.name)
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            # Keep one line per event: the exception's own line, not a multi-line traceback.
            exc = record.exc_info[1]
            message = f"{message}: {type(exc).__name__}: {exc}"
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        # Never let a newline inside a message break the one-line-per-event rule.
        message = message.replace("\n", " | ")
        return f"{self.formatTime(record)} {self.node} {component}: {message}"


def _component(name: str) -> str:
    if name == ROOT_LOGGER or not name.startswith(ROOT_LOGGER + "."):
        return "agent" if name in (ROOT_LOGGER, "root") else name
    return name.rsplit(".", 1)[-1]


def setup(node: str, level: int = logging.INFO, stream: TextIO | None = None) -> logging.Logger:
    """Send every vpnlab_agent.* logger to `stream` (stdout) with the line format above."""
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LineFormatter(node))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def get(component: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")


class LogLines:
    """Log lines kept for the caller to drain: the sans-I/O parts log here, whoever drives them prints.
    The subclass sets log_lines (a bounded deque)."""

    log_lines: deque[str]

    def log(self, line: str) -> None:
        self.log_lines.append(line)

    def pop_logs(self) -> list[str]:
        out = list(self.log_lines)
        self.log_lines.clear()
        return out
