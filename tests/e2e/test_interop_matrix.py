"""The strongSwan interop matrix: our agent against strongSwan 5.9 in both directions, over the
suites users pick, with PSKs (each branch its own key) and certificates (the lab CA).

One lab per direction keeps CI short: per suite one branch that offers only it, and hubs that offer
every suite, so every tunnel negotiates its own suite and all come up at once. Our hub serves all
branches of one auth method; a strongSwan hub serves one branch each, because charon's
kernel-libipsec cannot route a child whose local selectors hold another branch's LAN (it needs a
local address inside every local selector: "error installing route with policy").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vpnlab import lab as labs
from vpnlab.runtime.docker import DockerRuntime
from vpnlab.topology.model import Lab

from .ipsec import child_for, run, status, wait_for_children

pytestmark = pytest.mark.e2e

# (name, IKE proposal, ESP proposal, what both ends must report)
SUITES = [
    ("g128", "aes128gcm16-prfsha256-ecp256", "aes128gcm16", ("aes128gcm16", "prfsha256", "ecp256")),
    ("g256", "aes256gcm16-prfsha384-ecp384", "aes256gcm16", ("aes256gcm16", "prfsha384", "ecp384")),
    ("cbc", "aes128-sha256-modp2048", "aes128-sha256", ("aes128", "sha256", "modp2048")),
    ("x25519", "aes128gcm16-prfsha256-curve25519", "aes128gcm16", ("aes128gcm16", "curve25519")),
]
AUTHS = ("psk", "cert")
RSA_BRANCH = "x25519"  # its certificate has an RSA-2048 key; the others ECDSA P-256
# how charon names the RFC 7427 signature scheme it verified (AUTH method 14, not 1 or 9)
SIGNATURE = {"ecdsa-p256": "ECDSA_WITH_SHA256_DER", "rsa-2048": "RSA_EMSA_PKCS1_SHA2_256"}
DIRECTIONS = {"agent-hub": ("agent", "strongswan"), "swan-hub": ("strongswan", "agent")}


def hub_of(direction: str, auth: str, suite: str) -> str:
    return f"hub-{auth}" if direction == "agent-hub" else f"hub-{auth[0]}{suite}"


def topology(direction: str) -> dict[str, object]:
    hub_impl, branch_impl = DIRECTIONS[direction]
    nodes: dict[str, object] = {}
    every = {"proposals": [s[1] for s in SUITES], "esp_proposals": sorted({s[2] for s in SUITES})}
    for auth in AUTHS:
        for name, ike, esp, _ in SUITES:
            hub = hub_of(direction, auth, name)
            nodes.setdefault(hub, {"role": "hub", "implementation": hub_impl, "auth": auth, "hosts": [f"{hub}-h"],
                                   "crypto": every})
            branch: dict[str, object] = {"role": "branch", "implementation": branch_impl, "hubs": [hub],
                                         "auth": auth, "crypto": {"proposals": ike, "esp_proposals": esp}}
            if auth == "psk":
                branch["secret"] = {"psk": f"own key of {name}"}
            elif name == RSA_BRANCH:
                branch["crypto"]["cert_key"] = "rsa-2048"  # type: ignore[index]
            nodes[f"{auth}-{name}"] = branch
    return {"name": "matrix", "secret": {"psk": "lab-wide-unused"}, "nodes": nodes}


@pytest.fixture(scope="module", params=list(DIRECTIONS))
def matrix_lab(request: pytest.FixtureRequest, node_image: str, runtime: DockerRuntime,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Lab]]:
    from .conftest import unique_name

    path = tmp_path_factory.mktemp("matrix") / f"{request.param}.yml"
    path.write_text(yaml.safe_dump(topology(request.param)))
    name = unique_name("mx")
    try:
        labs.deploy(path, name=name, runtime=runtime)
        lab = labs.load_lab(path, name)
        for auth in AUTHS:
            for suite in SUITES:
                wait_for_children(runtime, name, f"{auth}-{suite[0]}", 1, timeout=60)
        yield request.param, name, lab
    finally:
        labs.destroy(name, runtime=runtime)


@pytest.mark.parametrize("auth", AUTHS)
@pytest.mark.parametrize("suite", SUITES, ids=[s[0] for s in SUITES])
def test_suite(matrix_lab: tuple[str, str, Lab], runtime: DockerRuntime, suite: tuple, auth: str) -> None:
    direction, name, lab = matrix_lab
    short, _, _, expected = suite
    hub, branch = hub_of(direction, auth, short), f"{auth}-{short}"
    for node, peer in ((hub, branch), (branch, hub)):
        state = status(runtime, name, node)
        (sa,) = [sa for sa in state["ike_sas"] if sa["peer"] == peer and sa["state"] == "established"]
        for word in expected:
            assert word in sa["algorithms"].split("-"), (node, sa["algorithms"])
        child_for(state, peer)
    if auth == "cert":  # charon says which signature of our agent it verified
        swan, agent = (branch, hub) if direction == "agent-hub" else (hub, branch)
        scheme = SIGNATURE[lab.node(agent).crypto.cert_key]
        logs = runtime.logs(f"vpnlab-{name}-{swan}", 2000)
        assert f"authentication of '{agent}' with {scheme} successful" in logs, logs[-2000:]
    target = str(lab.node(branch).interfaces[1].address.ip)  # the branch's lan0 address
    code, out = run(runtime, name, f"{hub}-h", ["ping", "-c", "2", "-i", "0.2", "-W", "2", target])
    assert code == 0, f"{hub}-h -> {branch} ({target}): {out}"
