"""RFC 5685 against libreswan 4.10 (its own image, `implementation: libreswan`): IKE only.

(a) pluto as a client (`accept-redirect=yes`) of our clusters: redirected at IKE_SA_INIT by the
    master to the least-loaded member, and at IKE_AUTH by lbauth's only member.
(b) pluto as a gateway redirects our branches: `global-redirect` in IKE_SA_INIT (lsgw) and a conn's
    `redirect-to` in IKE_AUTH (lsgwa), both to lstarget, which serves their clients as them.
pluto's data plane is the kernel's XFRM: on this kernel (no ESP) every child SA fails at install,
and the tests assert what pluto then does (docs/loadbalancer.md, "libreswan 4.10").
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from collections.abc import Iterator

import pytest

from tests.e2e.ipsec import UnderlayCapture
from vpnlab import lab as labs
from vpnlab.measure.labctl import LabCtl, wait_for
from vpnlab.runtime.docker import DockerRuntime

# 600 s: on a fresh machine the first test also debootstraps the libreswan image (1-3 min here)
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

TOPO = textwrap.dedent("""\
    name: lsredir
    secret: {psk: "vpnlab-libreswan-redirect-psk"}
    nodes:
      gw1: {role: gateway, lan: 10.0.1.0/24}
      gw2: {role: gateway, lan: 10.0.2.0/24}
      gw3: {role: gateway, lan: 10.0.3.0/24}
      ls1: {role: branch, implementation: libreswan, hubs: [lb], lan: 10.1.0.0/24}
      ls2: {role: branch, implementation: libreswan, hubs: [lbauth], lan: 10.2.0.0/24}
      lsgw: {role: hub, implementation: libreswan, lan: 10.5.0.0/24, libreswan: {redirect_to: lstarget}}
      lsgwa: {role: hub, implementation: libreswan, lan: 10.6.0.0/24,
              libreswan: {redirect_to: lstarget, redirect: auth}}
      lstarget: {role: hub, implementation: libreswan, lan: 10.7.0.0/24}
      br1: {role: branch, hubs: [lsgw], lan: 10.11.0.0/24, follow_redirects: true}
      br2: {role: branch, hubs: [lsgwa], lan: 10.12.0.0/24, follow_redirects: true}
    clusters:
      lb:
        members: [gw1, gw2]
        redirect: init
        key: "vpnlab-libreswan-status-key"
        # gw2 is master: with both members idle the tie goes to gw1, so the redirect is to another member
        vrrp: {advert_int: 0.1, priorities: {gw1: 190, gw2: 200}}
      lbauth:
        members: [gw3]
        redirect: auth
        key: "vpnlab-libreswan-status-key-2"
        vrrp: {advert_int: 0.1, virtual_router_id: 52}
    """)
NO_ESP = "Function not implemented (errno 38)"


@pytest.fixture(scope="module")
def ctl(node_image: str, runtime: DockerRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCtl]:
    import uuid

    path = tmp_path_factory.mktemp("lsredir") / "lsredir.yml"
    path.write_text(TOPO)
    name = f"lr{uuid.uuid4().hex[:6]}"
    try:
        labs.deploy(path, name=name, runtime=runtime)  # builds the libreswan image if missing
        yield LabCtl(runtime, name)
    finally:
        labs.destroy(name, runtime=runtime)


def pluto_lines(ctl: LabCtl, node: str) -> list[str]:
    text = labs.node_logs(ctl.lab, node, None, runtime=ctl.rt)[0]
    return [line.split(" pluto: ", 1)[1] for line in text.splitlines() if " pluto: " in line]


def logged(ctl: LabCtl, node: str, pattern: str, timeout: float = 60) -> list[str]:
    """pluto's log lines of `node` from the first one matching `pattern` on (waits for it)."""
    rx = re.compile(pattern)

    def find() -> list[str] | None:
        lines = pluto_lines(ctl, node)
        first = next((i for i, line in enumerate(lines) if rx.search(line)), None)
        return None if first is None else lines[first:]

    return wait_for(f"{node}'s pluto to log /{pattern}/", find, timeout)


def has_kernel_esp(ctl: LabCtl, node: str) -> bool:
    return bool(ctl.status(node)["services"]["libreswan"]["kernel_esp"])


def member_address(ctl: LabCtl, member: str) -> str:
    st = ctl.status(member)
    return next(a.split("/")[0] for i in st["interfaces"] if i["name"] == "cl0" for a in i["addresses"]
                if not a.startswith("203.0.113.2/") and not a.startswith("192.0.2.2/"))


def followed(ctl: LabCtl, node: str, exchange: str) -> tuple[str, str, list[str]]:
    """(the member pluto followed a redirect to, its address, pluto's log from there on)."""
    members = {member_address(ctl, m): m for m in ("gw1", "gw2", "gw3")}
    rx = re.compile(rf"{exchange} .*redirect.* to new gateway \(?(?:address: )?([\d.]+)\)?")
    lines = logged(ctl, node, rx.pattern)
    address = rx.search(lines[0])[1]  # type: ignore[index]
    assert address in members, (address, members)
    return members[address], address, lines


def test_redirect_libreswan_client_at_init_comes_up_at_the_member(ctl: LabCtl) -> None:
    member, address, lines = followed(ctl, "ls1", "IKE_SA_INIT")
    assert member in ("gw1", "gw2"), member
    assert any(f'"lb"[1] {address} ' in line and "initiator established IKE SA" in line and "'@lb'" in line
               for line in lines), "\n".join(lines)
    # gw2 is master once VRRP settles; ls1 may have come while gw1 still held the address
    counters = [ctl.status(m)["services"]["cluster"]["gateway"] for m in ("gw1", "gw2")]
    assert sum(c["redirected"] + c["to_self"] for c in counters) >= 1, counters
    assert all(c["unsupported"] == 0 for c in counters), counters
    sas = wait_for(f"{member} to hold ls1's IKE SA", lambda: [
        sa for sa in ctl.status(member)["ike_sas"] if sa["peer"] == "ls1" and sa["state"] == "established"], 30)
    assert sas[0]["remote"].split(":")[0] == wan_address(ctl, "ls1"), sas
    assert sas[0]["local"].split(":")[0] == address, sas  # at the member's own address, not the VIP


def test_redirect_libreswan_client_child_sa_without_kernel_esp(ctl: LabCtl) -> None:
    """What pluto does when the kernel refuses the ESP state: the IKE SA dies with its child, no
    DELETE is sent, and pluto revives the conn at the member it was redirected to."""
    if has_kernel_esp(ctl, "ls1"):
        pytest.skip("this kernel has ESP: pluto's child SA installs, the no-ESP path cannot be shown")
    _, target, _ = followed(ctl, "ls1", "IKE_SA_INIT")
    lines = logged(ctl, "ls1", re.escape(NO_ESP))
    assert re.search(r"Add SA esp\.[0-9a-f]+@" + re.escape(target), lines[0]), lines[0]
    after = "\n".join(lines[:8])
    assert "CHILD SA encountered fatal error" in after, after
    assert "NOT sending notification" in after and "schedule EVENT_REVIVE_CONNS" in after, after
    again = logged(ctl, "ls1", rf'"lb"\[1\] {re.escape(target)} #\d+: initiating IKEv2 connection', 30)
    assert again, "no revival"
    summary = ctl.status("ls1")
    assert not summary["child_sas"], summary["child_sas"]


def test_redirect_libreswan_client_at_auth(ctl: LabCtl) -> None:
    member, address, lines = followed(ctl, "ls2", "IKE_AUTH")
    assert member == "gw3", member
    assert any(f'"lbauth"[1] {address} ' in line and "initiator established IKE SA" in line for line in lines), \
        "\n".join(lines)
    gateway = ctl.status("gw3")["services"]["cluster"]["gateway"]
    assert gateway["redirected"] + gateway["to_self"] >= 1, gateway
    sas = wait_for("gw3 to hold ls2's IKE SA at its own address", lambda: [
        sa for sa in ctl.status("gw3")["ike_sas"] if sa["peer"] == "ls2" and sa["state"] == "established"
        and sa["local"].split(":")[0] == address], 60)
    assert sas


def _ike_sa_inits(cap: UnderlayCapture, dst: str) -> list[bytes]:
    """The IKE_SA_INIT requests to dst:500 in the capture, as IKE bytes."""
    out = subprocess.run(["tcpdump", "-nr", str(cap.path), "-x", f"udp and dst host {dst} and dst port 500"],
                         capture_output=True, text=True, timeout=30).stdout
    packets: list[bytes] = []
    for block in re.split(r"\n(?=\S)", out):
        hexes = "".join(w for line in block.splitlines()[1:] for w in line.split(":", 1)[-1].split())
        raw = bytes.fromhex(hexes)
        if raw:
            packets.append(raw[(raw[0] & 0x0F) * 4 + 8:])
    return packets


def _notify_types(data: bytes) -> dict[int, bytes]:
    """The notifies of an IKE_SA_INIT request ({} for anything else on port 500)."""
    from vpnlab_agent.ike.codec import CodecError, decode
    from vpnlab_agent.ike.constants import ExchangeType
    from vpnlab_agent.ike.payloads import Notify

    try:
        msg = decode(data)
    except CodecError:
        return {}
    if msg.exchange != ExchangeType.IKE_SA_INIT or msg.response:
        return {}
    return {n.notify_type: n.data for n in msg.find_all(Notify)}


def wan_address(ctl: LabCtl, node: str) -> str:
    return next(a.split("/")[0] for i in ctl.status(node)["interfaces"] if i["name"] == "wan0"
                for a in i["addresses"])


@pytest.mark.parametrize("branch,gateway,at", [("br1", "lsgw", "init"), ("br2", "lsgwa", "auth")])
def test_redirect_our_client_by_libreswan_gateway(ctl: LabCtl, branch: str, gateway: str, at: str) -> None:
    from vpnlab_agent.ike.constants import NotifyType

    target = wan_address(ctl, "lstarget")
    up = wait_for(f"{branch} at lstarget", lambda: [
        sa for sa in ctl.status(branch)["ike_sas"] if sa["peer"] == gateway and sa["state"] == "established"
        and sa["remote"].split(":")[0] == target], 60)
    redirect = ctl.status(branch)["services"]["redirect"]
    assert redirect["followed"] >= 1 and redirect["targets"] == {gateway: target}, redirect
    if at == "init":
        logged(ctl, gateway, r"responding to IKE_SA_INIT .* with unencrypted notification REDIRECT")
    served = logged(ctl, "lstarget", rf'"{branch}-via-{gateway}"\[1\] .*responder established IKE SA; '
                                     rf"authenticated peer using authby=secret and ID_FQDN '@{branch}'")
    assert served
    # Once more, on the wire: the IKE_SA_INIT at the target names the gateway that redirected.
    with UnderlayCapture(ctl.lab, f"udp port 500 and host {target}") as cap:
        code, out = ctl.run(branch, ["python3", "-m", "vpnlab_agent", "ctl", "terminate", gateway])
        assert code == 0, out
        code, out = ctl.run(branch, ["python3", "-m", "vpnlab_agent", "ctl", "initiate", gateway])
        assert code == 0, out
        wait_for(f"{branch} back at lstarget", lambda: [
            sa for sa in ctl.status(branch)["ike_sas"] if sa["peer"] == gateway and sa["state"] == "established"
            and sa["remote"].split(":")[0] == target and sa["spi_i"] != up[0]["spi_i"]], 60)
    try:
        inits = [n for pkt in _ike_sa_inits(cap, target) if (n := _notify_types(pkt))]
    finally:
        cap.cleanup()
    assert inits, "no IKE_SA_INIT to lstarget captured"
    redirected_from = [n[NotifyType.REDIRECTED_FROM] for n in inits if NotifyType.REDIRECTED_FROM in n]
    assert redirected_from, inits
    # GW Ident Type 1 (IPv4), length 4, the redirecting gateway's address
    assert redirected_from[0] == bytes([1, 4]) + bytes(int(x) for x in wan_address(ctl, gateway).split(".")), redirected_from
