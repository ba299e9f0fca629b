"""log.setup(): one line per event, `<ISO time>Z <node> <component>: <message>`."""

from __future__ import annotations

import io
import logging
import re

from vpnlab_agent import log

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z br1 (\S+): (.*)$")


def _lines(stream: io.StringIO) -> list[tuple[str, str]]:
    out = []
    for line in stream.getvalue().splitlines():
        m = LINE.match(line)
        assert m, f"badly formatted line: {line!r}"
        out.append((m.group(1), m.group(2)))
    return out


def test_components_and_levels() -> None:
    stream = io.StringIO()
    log.setup("br1", stream=stream)
    logging.getLogger("vpnlab_agent").info("started")
    logging.getLogger("vpnlab_agent.ike.session").warning("retransmit %d", 3)
    logging.getLogger("vpnlab_agent.charon").info("13[IKE] <hub|1> IKE_SA established")
    logging.getLogger("vpnlab_agent.control").debug("hidden at INFO")
    assert _lines(stream) == [
        ("agent", "started"),
        ("session", "warning: retransmit 3"),
        ("charon", "13[IKE] <hub|1> IKE_SA established"),
    ]


def test_one_line_even_for_exceptions_and_newlines() -> None:
    stream = io.StringIO()
    log.setup("br1", stream=stream)
    logger = log.get("agent")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("service failed\nbadly")
    (line,) = stream.getvalue().splitlines()
    assert LINE.match(line)
    assert line.endswith("error: service failed | badly: RuntimeError: boom")
