"""The lab's own PKI, made at deploy: one CA, one certificate per router that authenticates with
certificates (or whose peers expect one), each with the router's identity in its subjectAltName.

Only the `cryptography` library's x509 API, no openssl command lines. Nothing is written on the
host: the PEM bytes go into the containers as files of mode 0600 (ContainerSpec.files), and the
CA's private key is never written anywhere, so no certificate can be issued after deploy.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from vpnlab.topology.model import Lab, Node

VALID_DAYS = 365  # a lab lives hours or days; a year keeps a long-lived one working
BACKDATE = datetime.timedelta(hours=1)  # clocks of the host and containers agree, but be lenient
RSA_BITS = 2048
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class LabPki:
    ca_pem: bytes
    certs: dict[str, Issued]  # by router name

    def files_for(self, lab: Lab, node: Node) -> dict[str, bytes]:
        """The PKI files of one router: the CA, its own certificate and key, its peers' certificates."""
        from vpnlab.nodeconfig import build_node_config

        config = build_node_config(lab, node)
        if config.ike is None or config.ike.pki is None:
            return {}
        paths = config.ike.pki
        files = {paths.ca_file: self.ca_pem}
        if config.ike.auth == "cert":
            files[paths.cert_file] = self.certs[node.name].cert_pem
            files[paths.key_file] = self.certs[node.name].key_pem
        for peer in config.ike.peers:
            if peer.cert_file:
                files[peer.cert_file] = self.certs[peer.name].cert_pem
        return files


def needs_pki(lab: Lab) -> bool:
    return any(n.crypto.auth == "cert" for n in lab.routers)


def make_lab_pki(lab: Lab, now: datetime.datetime | None = None) -> LabPki:
    """A fresh CA and a certificate for every router with auth: cert."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    ca, ca_key = make_ca(f"vpnlab {lab.name} CA", now)
    certs = {}
    for node in lab.routers:
        if node.crypto.auth == "cert":
            certs[node.name] = issue(ca, ca_key, node.name, node.crypto.cert_key, now)
    return LabPki(ca.public_bytes(serialization.Encoding.PEM), certs)


def make_ca(name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 CA that may sign end-entity certificates only (path length 0)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnlab"),
        x509.NameAttribute(NameOID.COMMON_NAME, name),
    ])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return ca, ca_key


def issue(ca: x509.Certificate, ca_key: Key, identity: str, key_type: str, now: datetime.datetime,
          days: int = VALID_DAYS) -> Issued:
    """A router certificate: CN and subjectAltName dNSName are its identity (strongSwan and our agent
    match the IKE identity against the subjectAltName)."""
    key: Key = rsa.generate_private_key(65537, RSA_BITS) if key_type == "rsa-2048" else ec.generate_private_key(
        ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnlab"),
        x509.NameAttribute(NameOID.COMMON_NAME, identity),
    ])
    cert = (
        _builder(subject, ca.subject, key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object, now: datetime.datetime,
             days: int = VALID_DAYS) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )

