"""RFC 5685 REDIRECT in IKE_AUTH on real containers: two members with `redirect: auth`, our agent
as one client and strongSwan 5.9.8 (charon) as the other.

Upstream reports a use-after-free in charon 5.9.8 when it follows a redirect received in IKE_AUTH
(fixed in 5.9.12); this module records what this image's charon really does.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TOPO = textwrap.dedent("""\
    name: lbauth
    secret: {psk: "vpnlab-lb-auth-psk"}
    nodes:
      gw1: {role: gateway, lan: 10.0.1.0/24, hosts: 1}
      gw2: {role: gateway, lan: 10.0.2.0/24, hosts: 1}
      br1: {role: branch, hubs: [lb], lan: 10.1.0.0/24}
      br2: {role: branch, hubs: [lb], lan: 10.2.0.0/24, implementation: strongswan}
      br3: {role: branch, hubs: [lb], lan: 10.3.0.0/24}
    clusters:
      lb:
        members: [gw1, gw2]
        redirect: auth
        key: "vpnlab-lb-auth-status-key"
        vrrp: {advert_int: 0.1}
    """)
ADDR = {"gw1": "203.0.113.10", "gw2": "203.0.113.11"}


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    import uuid

    path = tmp_path_factory.mktemp("lbauth") / "lbauth.yml"
    path.write_text(TOPO)
    name = f"la{uuid.uuid4().hex[:6]}"
    old = os.environ.get("VPNLAB_EXPERIMENTAL")
    os.environ["VPNLAB_EXPERIMENTAL"] = "clusters"
    try:
        labs.deploy(path, name=name, runtime=runtime)
        yield LabCtl(runtime, name)
    finally:
        if old is None:
            os.environ.pop("VPNLAB_EXPERIMENTAL", None)
        else:
            os.environ["VPNLAB_EXPERIMENTAL"] = old
        labs.destroy(name, runtime=runtime)


def remote_of(ctl: LabCtl, node: str) -> str | None:
    for sa in ctl.status(node)["ike_sas"]:
        if sa["state"] == "established":
            return sa["remote"].split(":")[0]
    return None


def test_redirect_at_auth_our_client_ends_at_a_members_address(ctl: LabCtl) -> None:
    for b in ("br1", "br3"):
        addr = wait_for(f"{b} up", lambda b=b: remote_of(ctl, b), 60)
        assert addr in ADDR.values(), (b, addr)
        assert ctl.status(b)["services"]["redirect"]["followed"] >= 1
    masters = [m for m in ADDR if ctl.status(m)["services"]["cluster"]["vrrp"] == "MASTER"]
    assert len(masters) == 1
    gw = ctl.status(masters[0])["services"]["cluster"]["gateway"]
    assert gw["redirected"] + gw["to_self"] >= 2


def test_redirect_at_auth_strongswan_598(ctl: LabCtl) -> None:
    """What charon 5.9.8 does with a REDIRECT in the IKE_AUTH response (see the module docstring)."""
    addr = wait_for("br2 (charon) up", lambda: remote_of(ctl, "br2"), 90)
    code, out = ctl.run("br2", ["sh", "-c", "pidof charon-systemd; swanctl --list-sas --raw"])
    assert code == 0, out
    assert addr in ADDR.values(), (addr, out)
