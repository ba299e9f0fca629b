"""Certificate authentication (RFC 7427 digital signatures) between two endpoints in memory, with
certificates from the lab PKI (vpnlab.pki), and every certificate we must refuse."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vpnlab.pki import Issued, issue
from vpnlab_agent.config import IkeConfig, PeerConfig
from vpnlab_agent.ike.certs import Credentials
from vpnlab_agent.ike.endpoint import IkeEndpoint, IkeError
from vpnlab_agent.ike.events import AuthFailed, ChildSAUp, IkeSAUp
from vpnlab_agent.ike.loopback import Loopback

HUB, BR1 = "198.51.100.10", "198.51.100.11"
NOW = datetime.datetime(2026, 12, 1, 9, 0, tzinfo=datetime.timezone.utc)
PEM = serialization.Encoding.PEM


def make_ca(name: str = "vpnlab t CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


CA = make_ca()
ISSUED = {name: issue(CA[0], CA[1], name, "ecdsa-p256", NOW) for name in ("hub", "br1", "br2")}


def creds(own: Issued | None, issued: dict[str, Issued], ca: x509.Certificate = CA[0]) -> Credentials:
    return Credentials.from_pem(ca.public_bytes(PEM), own.cert_pem if own else None, own.key_pem if own else None,
                                {n: i.cert_pem for n, i in issued.items()})


def pair(*, branch_cert: Issued | None = None, branch_id: str = "br1", hub_auth: str = "cert",
         branch_auth: str = "cert", pinned: Issued | None = None, wall: datetime.datetime = NOW):
    lan_h, lan_b = ("10.0.0.0/24",), ("10.1.0.0/24",)
    hub_cfg = IkeConfig(local_id="hub", psk="", auth=hub_auth, peers=(  # type: ignore[arg-type]
        PeerConfig("br1", "br1", None, False, lan_h, lan_b, auth=branch_auth, psk="k"),))  # type: ignore[arg-type]
    br_cfg = IkeConfig(local_id=branch_id, psk="", auth=branch_auth, peers=(  # type: ignore[arg-type]
        PeerConfig("hub", "hub", HUB, True, lan_b, lan_h, auth=hub_auth, psk="k"),))  # type: ignore[arg-type]
    own = branch_cert or ISSUED["br1"]
    hub = IkeEndpoint(hub_cfg, HUB, force_encap=False, wall_clock=lambda: wall,
                      credentials=creds(ISSUED["hub"] if hub_auth == "cert" else None, {"br1": pinned or ISSUED["br1"]}))
    br = IkeEndpoint(br_cfg, BR1, force_encap=True, wall_clock=lambda: wall,
                     credentials=creds(own if branch_auth == "cert" else None, {"hub": ISSUED["hub"]}))
    return hub, br, Loopback(hub, br)


def connect(hub: IkeEndpoint, br: IkeEndpoint, lb: Loopback) -> tuple[list, list]:
    br.connect("hub", 0.0)
    lb.run(2.0)
    return lb.take_events(HUB), lb.take_events(BR1)


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


@pytest.mark.parametrize(("hub_auth", "branch_auth", "key"),
                         [("cert", "cert", "ecdsa-p256"), ("cert", "cert", "rsa-2048"), ("cert", "psk", "ecdsa-p256"),
                          ("psk", "cert", "rsa-2048")])
def test_signatures_both_ways(hub_auth: str, branch_auth: str, key: str) -> None:
    own = issue(CA[0], CA[1], "br1", key, NOW)
    hub, br, lb = pair(branch_cert=own, pinned=own, hub_auth=hub_auth, branch_auth=branch_auth)
    ev_h, ev_b = connect(hub, br, lb)
    assert of(ev_h, IkeSAUp) and of(ev_b, IkeSAUp) and of(ev_h, ChildSAUp), (hub.pop_logs(), br.pop_logs())


def refused(reason: str, **kw: object) -> None:
    hub, br, lb = pair(**kw)  # type: ignore[arg-type]
    ev_h, ev_b = connect(hub, br, lb)
    assert not of(ev_h, IkeSAUp) and not of(ev_b, IkeSAUp)
    (fail,) = of(ev_h, AuthFailed)
    assert reason in fail.reason, fail.reason
    assert any(reason in line for line in hub.pop_logs())


def test_expired_certificate_is_refused() -> None:
    old = issue(CA[0], CA[1], "br1", "ecdsa-p256", NOW - datetime.timedelta(days=40), days=10)
    refused("certificate expired on", branch_cert=old, pinned=old)


def test_certificate_of_a_foreign_ca_with_the_same_name_is_refused() -> None:
    foreign = make_ca()
    refused("does not verify against the lab CA", branch_cert=issue(foreign[0], foreign[1], "br1", "ecdsa-p256", NOW))


def test_certificate_of_another_ca_is_refused() -> None:
    other = make_ca("someone else's CA")
    refused("not by the lab CA", branch_cert=issue(other[0], other[1], "br1", "ecdsa-p256", NOW))


def test_a_lab_certificate_not_issued_to_this_peer_now_is_revoked_by_omission() -> None:
    refused("not the certificate the lab issued to br1 (revoked by omission)",
            branch_cert=issue(CA[0], CA[1], "br1", "ecdsa-p256", NOW))


def test_another_branchs_valid_certificate_cannot_claim_its_identity() -> None:
    """br2's own, valid certificate, used to claim br1: the identity is not in its SAN."""
    refused("identity 'br1' is not in the certificate's subjectAltName", branch_cert=ISSUED["br2"])


def test_a_branch_cannot_claim_another_identity_with_its_own_certificate() -> None:
    hub, br, lb = pair(branch_id="br2")  # br1's certificate, claiming br2 (no peer br2 at this hub)
    ev_h, _ = connect(hub, br, lb)
    assert not of(ev_h, IkeSAUp) and of(ev_h, AuthFailed)


def test_cert_auth_without_credentials_is_refused_at_start() -> None:
    cfg = IkeConfig(local_id="hub", psk="", auth="cert")
    with pytest.raises(IkeError, match="needs credentials"):
        IkeEndpoint(cfg, HUB, force_encap=False)
