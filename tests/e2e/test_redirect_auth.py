"""RFC 5685 REDIRECT in IKE_AUTH on real containers: two members with `redirect: auth` and two of
our agents as clients; then the client's loop guard (RFC 5685 §7) against a gateway that redirects
for ever. strongSwan 5.9.8 with a redirect at IKE_AUTH: test_redirect_auth_strongswan.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

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
      br1: {role: branch, hubs: [lb], lan: 10.1.0.0/24, hosts: 1}
      br3: {role: branch, hubs: [lb], lan: 10.3.0.0/24}
    clusters:
      lb:
        members: [gw1, gw2]
        redirect: auth
        key: "vpnlab-lb-auth-status-key"
        vrrp: {advert_int: 0.1}
    """)
ADDR = {"gw1": "203.0.113.10", "gw2": "203.0.113.11"}
VIP, EDGE = "203.0.113.2", "203.0.113.1"


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    import uuid

    path = tmp_path_factory.mktemp("lbauth") / "lbauth.yml"
    path.write_text(TOPO)
    name = f"la{uuid.uuid4().hex[:6]}"
    try:
        labs.deploy(path, name=name, runtime=runtime)
        yield LabCtl(runtime, name)
    finally:
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
    wait_for("one VRRP master", lambda: [ctl.status(m)["services"]["cluster"]["vrrp"] for m in ADDR].count("MASTER") == 1, 30)
    # whoever was master when they came (gw1 may have preempted gw2 since) redirected them
    gws = [ctl.status(m)["services"]["cluster"]["gateway"] for m in ADDR]
    assert sum(g["redirected"] + g["to_self"] for g in gws) >= 2, gws
    # the redirect came in IKE_AUTH: no SA stays up on the virtual address
    vip_sas = [sa for m in ADDR for sa in ctl.status(m)["ike_sas"] if sa["local"].split(":")[0] == VIP]
    assert all(sa["state"] != "established" for sa in vip_sas), vip_sas


def test_redirect_at_auth_traffic_flows_through_the_member(ctl: LabCtl) -> None:
    member = next(m for m, a in ADDR.items() if a == remote_of(ctl, "br1"))
    code, out = ctl.run("br1-h1", ["ping", "-n", "-c", "3", "-i", "0.2", "-w", "10", f"10.0.{member[-1]}.10"])
    assert code == 0 and out.count("bytes from") >= 1, (member, out)


# A gateway that redirects every IKE_SA_INIT back to the virtual address, built on the agent's own
# RFC 5685 gateway extension; the upstream router sends one branch's IKE for the VIP to it (DNAT).
LOOP = r"""
import select, socket, sys, time
from vpnlab_agent.cluster.redirect_gateway import RedirectGateway
from vpnlab_agent.cluster.status import MemberStatus
from vpnlab_agent.config import IkeConfig
from vpnlab_agent.ike.endpoint import IkeEndpoint
me, vip, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
gw = RedirectGateway("loop", "init", lambda: MemberStatus("loop", vip, 0, 0))
ep = IkeEndpoint(IkeConfig("lb", "not the key"), me, force_encap=False, extensions=[gw])
socks = {}
for port in (500, 4500):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((me, port))
    socks[port] = s
print("listening", flush=True)
end = time.monotonic() + secs
while time.monotonic() < end:
    ready, _, _ = select.select(list(socks.values()), [], [], 0.2)
    for s in ready:
        data, addr = s.recvfrom(65535)
        ep.receive_datagram(data, addr, s.getsockname()[1], time.monotonic())
    for data, dst, lport in ep.datagrams_to_send(time.monotonic()):
        socks[lport].sendto(data, dst)
print(gw.stats.redirected, flush=True)
"""


def test_redirect_loop_guard_stops_following_a_gateway_that_redirects_for_ever(ctl: LabCtl) -> None:
    """Last in the module: br3's guard stays spent for 300 s afterwards."""
    edge = "lb-up"
    code, out = ctl.run("br3", ["ip", "-4", "-o", "addr", "show", "dev", "wan0"])
    br3 = out.split()[3].split("/")[0]
    rules = (f"add table ip loop; add chain ip loop pre {{ type nat hook prerouting priority -100; }}; "
             f"add rule ip loop pre ip saddr {br3} ip daddr {VIP} udp dport {{ 500, 4500 }} dnat to {EDGE}")
    code, out = ctl.run(edge, ["nft", rules])
    assert code == 0, out
    code, out = ctl.run(edge, ["sh", "-c", 'setsid python3 -c "$0" "$@" >/tmp/loop.out 2>&1 &', LOOP, EDGE, VIP, "60"])
    assert code == 0, out
    wait_for("the looping gateway listening", lambda: "listening" in ctl.run(edge, ["cat", "/tmp/loop.out"])[1], 10)
    before = ctl.status("br3")["services"]["redirect"]
    assert 1 <= before["followed"] < 5 and before["refused_loop"] == 0, before
    ctl.run("br3", ["python3", "-m", "vpnlab_agent", "ctl", "terminate", "lb"])
    ctl.run("br3", ["python3", "-m", "vpnlab_agent", "ctl", "initiate", "lb"])
    st = wait_for("br3's loop guard to refuse a redirect",
                  lambda: s if (s := ctl.status("br3")["services"]["redirect"])["refused_loop"] else None, 30)
    # at most 5 redirects in 300 s (RFC 5685 §7), the first one (from the real master) included
    assert st["followed"] == 5 and st["targets"]["lb"] == VIP, st
    assert remote_of(ctl, "br3") is None
    assert remote_of(ctl, "br1") in ADDR.values()  # nobody else was touched
