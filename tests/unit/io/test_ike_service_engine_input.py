"""IkeService's hand-over of IKE messages from the engine's packet thread to its event loop.

The service is not started (that needs root for UDP 500 and the TUN engine): the test sets its
loop as start() would and feeds `_on_ike_from_engine` directly, as the engine's inbound thread does.
"""

from __future__ import annotations

import asyncio
import threading

from tests.unit.agent.conftest import make_branch, make_hub
from vpnlab_agent.dataplane.userspace import UserspaceEngine
from vpnlab_agent.ike.endpoint import IkeEndpoint
from vpnlab_agent.io.ike_service import MAX_ENGINE_BACKLOG, IkeService


def test_a_flood_from_the_engine_is_bounded_and_real_ike_still_gets_through() -> None:
    hub, branch = make_hub(implementation="agent"), make_branch(implementation="agent")
    service = IkeService(hub, UserspaceEngine())  # never opened: its send_ike fails, which is logged
    initiator = IkeEndpoint(branch.ike, branch.public_address, force_encap=True)  # type: ignore[arg-type]
    initiator.connect("hub", 0.0)
    (init_request, _, _), = initiator.datagrams_to_send(0.0)
    src = (branch.public_address or "", 4500)

    async def run() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        service._loop = loop
        # The engine thread outruns the loop: 5000 junk messages arrive before the loop runs once.
        flood = threading.Thread(target=lambda: [service._on_ike_from_engine(b"junk", src) for _ in range(5000)])
        flood.start()
        flood.join()
        backlog = len(service._from_engine)
        ready = len(loop._ready)  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
        service._on_ike_from_engine(init_request, src)
        await asyncio.sleep(0.01)
        service._loop = None
        return backlog, ready

    backlog, ready = asyncio.run(run())
    assert backlog == MAX_ENGINE_BACKLOG and service.engine_dropped == 5000 - MAX_ENGINE_BACKLOG
    assert ready == 1  # one drain call for the whole burst, not one callback per message
    assert not service._from_engine
    assert service.endpoint.status(0.0)["half_open"] == 1  # the genuine IKE_SA_INIT was answered


def test_a_timed_out_wait_up_leaves_no_waiter_behind() -> None:
    service = IkeService(make_branch(implementation="agent"), UserspaceEngine())

    async def run() -> None:
        for _ in range(3):
            try:
                await service.wait_up("hub", 0.01)
            except asyncio.TimeoutError:
                pass
            else:
                raise AssertionError("no IKE SA can be up: the service never started")

    asyncio.run(run())
    assert service._up_waiters == {}


class _Wire:
    """Stands in for the UDP 500 socket's transport: what the service sends, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def test_api_calls_from_outside_input_are_flushed_without_being_asked() -> None:
    """An extension (the mesh) calls the endpoint from its own timer or a conntrack event: the
    endpoint wakes the service, which sends at once; no private flush call is needed."""
    branch = make_branch(implementation="agent")
    service = IkeService(branch, UserspaceEngine())
    wire = _Wire()

    async def run() -> int:
        service._loop = asyncio.get_running_loop()
        service._udp = wire  # type: ignore[assignment]
        service.endpoint.connect("hub", service._now())
        before = len(wire.sent)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        service._loop = None
        return before

    before = asyncio.run(run())
    assert before == 0 and len(wire.sent) == 1  # the IKE_SA_INIT, sent on the next loop turn
    assert wire.sent[0][1][1] == 500
