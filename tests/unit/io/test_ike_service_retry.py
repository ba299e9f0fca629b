"""IkeService's retry after a lost IKE SA: backoff, and at once for a cluster's virtual address.

The service is not started (that needs root): the test sets its loop as start() would and hands it
the endpoint's IkeSADown events as the endpoint would.
"""

from __future__ import annotations

import asyncio

from tests.unit.agent.conftest import make_branch
from vpnlab_agent.dataplane.userspace import UserspaceEngine
from vpnlab_agent.ike.events import DEAD, IkeSADown
from vpnlab_agent.io.ike_service import RETRY_FIRST_S, IkeService


def delays(at_once: bool, reasons: list[str]) -> list[float]:
    service = IkeService(make_branch(implementation="agent"), UserspaceEngine())
    if at_once:
        service.at_once.add("hub")
    out = []

    async def run() -> None:
        service._loop = asyncio.get_running_loop()
        for reason in reasons:
            service._handle_event(IkeSADown("hub", reason))
            out.append(service._retry["hub"][0])
        service._retry.pop("hub")[1].cancel()
        service._loop = None

    asyncio.run(run())
    return out


def test_a_lost_sa_is_retried_with_a_doubling_delay() -> None:
    assert delays(False, [DEAD, DEAD, "closed"]) == [RETRY_FIRST_S, 2 * RETRY_FIRST_S, 4 * RETRY_FIRST_S]


def test_a_dead_virtual_address_peer_is_retried_at_once_then_with_the_usual_backoff() -> None:
    assert delays(True, [DEAD, DEAD, DEAD]) == [0.0, RETRY_FIRST_S, 2 * RETRY_FIRST_S]
    assert delays(True, ["closed"]) == [RETRY_FIRST_S]  # an orderly close is not a dead member
