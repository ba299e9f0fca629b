"""strongSwan 5.9.8 (this image's charon) as a client redirected in IKE_AUTH: what really happens.

Upstream reports a use-after-free in charon when it follows a REDIRECT received in IKE_AUTH, fixed
in 5.9.12. Here charon verifies our AUTH, logs "redirected to <member>", starts the new IKE_SA and
aborts ("free(): double free detected"): the node stops being ready (the deploy fails naming it
when it sees that first). Use `redirect: init` with strongSwan clients older than 5.9.12 (docs/loadbalancer.md).
If this test fails because charon now survives, the image's strongSwan was fixed: update the docs.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest

from vpnlab import lab as labs
from vpnlab import nodelogs
from vpnlab.bringup import NodeFailed
from vpnlab.measure.labctl import wait_for
from vpnlab.runtime.docker import DockerRuntime

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TOPO = textwrap.dedent("""\
    name: lbauthsw
    secret: {psk: "vpnlab-lb-auth-psk"}
    nodes:
      gw1: {role: gateway, lan: 10.0.1.0/24}
      gw2: {role: gateway, lan: 10.0.2.0/24}
      br2: {role: branch, hubs: [lb], lan: 10.2.0.0/24, implementation: strongswan}
    clusters:
      lb:
        members: [gw1, gw2]
        redirect: auth
        key: "vpnlab-lb-auth-status-key"
        vrrp: {advert_int: 0.1}
    """)
MEMBER_ADDRS = ("203.0.113.10", "203.0.113.11")
CRASH = "charon exited unexpectedly"


def test_redirect_at_auth_strongswan_598_aborts_after_following(
        node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> None:
    import uuid

    path = tmp_path_factory.mktemp("lbauthsw") / "lbauthsw.yml"
    path.write_text(TOPO)
    name = f"ls{uuid.uuid4().hex[:6]}"
    try:
        try:
            labs.deploy(path, name=name, runtime=runtime, ready_timeout=30)
        except NodeFailed as failed:  # the crash came before the deploy saw br2 ready
            assert failed.nodes == ("br2",), failed
        text = wait_for("charon's end", lambda: t if any(
            w in (t := labs.node_logs(name, "br2", None, runtime=runtime)[0]) for w in (CRASH, "established")) else None, 60)
    finally:
        labs.destroy(name, runtime=runtime)
        shutil.rmtree(nodelogs.kept_dir(name), ignore_errors=True)  # what the failed deploy kept
    lines = text.splitlines()
    auth = next(i for i, line in enumerate(lines) if "parsed IKE_AUTH response" in line and "N(REDIR)" in line)
    assert any("authentication of 'lb' with pre-shared key successful" in line for line in lines[auth:]), text
    assert any(f"redirected to {a}" in line for line in lines[auth:] for a in MEMBER_ADDRS), text
    assert any(CRASH in line for line in lines[auth:]), text
    assert not any("established" in line for line in lines), text
