"""Which engine the virtual address gets (agent start-up: a broken import here left members
without their cluster service, so the lab never had a VRRP master)."""

from __future__ import annotations

import pytest

from vpnlab_agent.cluster import wiring
from vpnlab_agent.config import NodeConfig
from vpnlab_agent.dataplane import probe
from vpnlab_agent.dataplane.userspace import UserspaceEngine


def node(dataplane: str) -> NodeConfig:
    return NodeConfig(lab="lb", name="gw1", role="gateway", implementation="agent", public_address=None,
                      interfaces=(), dataplane=dataplane)  # type: ignore[arg-type]


@pytest.mark.parametrize("dataplane", ["auto", "userspace"])
def test_the_virtual_address_gets_its_own_userspace_device_without_kernel_esp(
        dataplane: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "esp_probe_error", lambda: "the kernel refused an ESP AES-GCM state")
    engine = wiring.vip_engine(node(dataplane), "10.0.1.1")
    assert isinstance(engine, UserspaceEngine) and engine.device == wiring.VIP_DEVICE
