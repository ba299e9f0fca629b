"""IkeService schedules NAT keepalives every `nat_keepalive_s`, and none at 0 (the topology's
`crypto.nat_keepalive: 0`, for watching a NAT mapping expire)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.unit.agent.conftest import make_branch
from vpnlab_agent.dataplane.userspace import UserspaceEngine
from vpnlab_agent.io.ike_service import IkeService


@pytest.mark.parametrize(("interval", "scheduled"), [(0, False), (3, True)])
def test_keepalives_are_scheduled_unless_turned_off(interval: int, scheduled: bool) -> None:
    cfg = make_branch(implementation="agent")
    cfg = dataclasses.replace(cfg, ike=dataclasses.replace(cfg.ike, nat_keepalive_s=interval))  # type: ignore[type-var]
    service = IkeService(cfg, UserspaceEngine())

    async def run() -> float | None:
        loop = asyncio.get_running_loop()
        service._start_keepalives(loop)
        handle = service._keepalive
        if handle is None:
            return None
        handle.cancel()
        return handle.when() - loop.time()

    due = asyncio.run(run())
    assert (due is not None) == scheduled
    if due is not None:
        assert 2.9 < due <= 3.0
