"""The lab PKI made at deploy: a CA, router certificates with their identity in the SAN, files per router."""

from __future__ import annotations

import textwrap
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vpnlab.pki import make_lab_pki, needs_pki
from vpnlab.topology import load_topology

TEXT = """\
name: t
secret: {psk: k}
defaults: {auth: cert}
nodes:
  hub: {role: hub}
  br1: {role: branch, crypto: {cert_key: rsa-2048}}
  br2: {role: branch, auth: psk}
"""


def test_ca_and_router_certificates(tmp_path: Path) -> None:
    (tmp_path / "t.yml").write_text(textwrap.dedent(TEXT))
    lab = load_topology(tmp_path / "t.yml")
    assert needs_pki(lab)
    pki = make_lab_pki(lab)
    ca = x509.load_pem_x509_certificate(pki.ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert set(pki.certs) == {"hub", "br1"}  # br2 authenticates with its PSK
    for name, key_type in (("hub", ec.EllipticCurvePublicKey), ("br1", rsa.RSAPublicKey)):
        cert = x509.load_pem_x509_certificate(pki.certs[name].cert_pem)
        assert isinstance(cert.public_key(), key_type)
        assert cert.issuer == ca.subject
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == [name]
        ca_key = ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]


def test_each_router_gets_its_files_only(tmp_path: Path) -> None:
    (tmp_path / "t.yml").write_text(textwrap.dedent(TEXT))
    lab = load_topology(tmp_path / "t.yml")
    pki = make_lab_pki(lab)
    d = "/etc/vpnlab/pki"
    assert set(pki.files_for(lab, lab.node("hub"))) == {f"{d}/ca.pem", f"{d}/cert.pem", f"{d}/key.pem",
                                                        f"{d}/peers/br1.pem"}
    # br2 proves itself with its PSK but checks the hub's certificate
    files = pki.files_for(lab, lab.node("br2"))
    assert files == {f"{d}/ca.pem": pki.ca_pem, f"{d}/peers/hub.pem": pki.certs["hub"].cert_pem}
    assert pki.files_for(lab, lab.node("br1"))[f"{d}/key.pem"] == pki.certs["br1"].key_pem


def test_the_node_config_is_the_last_file_a_router_gets(tmp_path: Path) -> None:
    # The Docker runtime writes the files in order just after start and the agent starts once its
    # config is there: the PEM files must already be in place by then.
    from vpnlab.lab import _container_specs
    from vpnlab_agent.config import CONFIG_PATH

    (tmp_path / "t.yml").write_text(textwrap.dedent(TEXT))
    specs = _container_specs(load_topology(tmp_path / "t.yml"))
    for node in ("hub", "br1", "br2"):
        files = list(specs[node].files)
        assert len(files) > 1 and files[-1] == CONFIG_PATH, node
