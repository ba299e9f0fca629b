"""Our client redirected by strongSwan 5.9.8 as a gateway: `swanctl --redirect` on an established SA
sends an INFORMATIONAL REDIRECT (RFC 5685 §6); the branch (`follow_redirects: true`) follows it with
a new IKE_SA_INIT carrying REDIRECTED_FROM. charon redirects to its own address here: a second
gateway would have to show the same identity, which only cluster members do.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest

from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TOPO = textwrap.dedent("""\
    name: lbswan
    secret: {psk: "vpnlab-swanctl-redirect-psk"}
    nodes:
      hub: {role: hub, lan: 10.0.0.0/24, hosts: 1, implementation: strongswan}
      br1: {role: branch, hubs: [hub], lan: 10.1.0.0/24, hosts: 1, follow_redirects: true}
    """)


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    import uuid

    path = tmp_path_factory.mktemp("lbswan") / "lbswan.yml"
    path.write_text(TOPO)
    name = f"lw{uuid.uuid4().hex[:6]}"
    try:
        labs.deploy(path, name=name, runtime=runtime)
        yield LabCtl(runtime, name)
    finally:
        labs.destroy(name, runtime=runtime)


def established(ctl: LabCtl) -> list[dict]:
    return [sa for sa in ctl.status("br1")["ike_sas"] if sa["state"] == "established"]


def test_redirect_our_client_follows_swanctl_redirect_on_an_established_sa(ctl: LabCtl) -> None:
    (before,) = wait_for("br1 up", lambda: established(ctl), 60)
    hub = before["remote"].split(":")[0]
    assert ctl.status("br1")["services"]["redirect"]["followed"] == 0
    code, out = ctl.run("hub", ["swanctl", "--redirect", "--ike", "br1", "--gateway", hub])
    assert code == 0, out
    st = wait_for("br1 to follow charon's redirect",
                  lambda: s if (s := ctl.status("br1")["services"]["redirect"])["followed"] else None, 30)
    assert st["targets"] == {"hub": hub} and st["refused_loop"] == st["refused_bad"] == 0, st
    after = wait_for("br1 up again on a new IKE SA", lambda: [
        sa for sa in established(ctl) if sa["spi_i"] != before["spi_i"]], 30)
    assert after[0]["remote"].split(":")[0] == hub
    code, out = ctl.run("br1-h1", ["ping", "-n", "-c", "1", "-w", "10", "10.0.0.10"])
    assert code == 0, out
