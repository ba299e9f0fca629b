"""Certificates and RFC 7427 signature authentication: our credentials, the AUTH data we sign, and
the checks a peer's certificate and AUTH must pass.

Sans-I/O: PEM/DER bytes and a wall-clock `datetime` in (validity needs the calendar, which the
protocol's monotonic `now` is not), verdicts out. `CertError` carries the one-line reason the log
shows. What we accept: a certificate the lab CA signed (foreign CA refused), valid now (expired
refused), for the identity the peer claims in its subjectAltName, and, when we know the one the
lab issued to that peer, exactly that one (any other is treated as revoked: revoked by omission).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vpnlab_agent.ike.constants import HashAlgorithm, IdType

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# RFC 7427 Appendix A: DER AlgorithmIdentifiers. RSA ones carry a NULL parameter (as strongSwan
# sends them); on receipt the NULL-less form is accepted too.
_ECDSA = {
    "sha256": bytes.fromhex("300a06082a8648ce3d040302"),
    "sha384": bytes.fromhex("300a06082a8648ce3d040303"),
    "sha512": bytes.fromhex("300a06082a8648ce3d040304"),
}
_RSA = {
    "sha256": bytes.fromhex("300d06092a864886f70d01010b0500"),
    "sha384": bytes.fromhex("300d06092a864886f70d01010c0500"),
    "sha512": bytes.fromhex("300d06092a864886f70d01010d0500"),
}
_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_SCHEMES: dict[bytes, tuple[str, str]] = {}
for _h, _der in _ECDSA.items():
    _SCHEMES[_der] = ("ecdsa", _h)
for _h, _der in _RSA.items():
    _SCHEMES[_der] = ("rsa", _h)
    _SCHEMES[bytes((0x30, _der[1] - 2)) + _der[2:-2]] = ("rsa", _h)  # without the NULL
# What we announce in SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4)
SIGNATURE_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


class CertError(Exception):
    """A certificate or signature we refuse; the message is the log line's reason."""


@dataclass(frozen=True)
class Credentials:
    """The lab CA (the only trust anchor), our certificate and key (auth cert), and the
    certificates the lab issued to our peers, by peer name."""

    ca: x509.Certificate
    cert: x509.Certificate | None = None
    key: PrivateKey | None = None
    issued: dict[str, bytes] = field(default_factory=dict)  # peer name -> DER

    @classmethod
    def from_pem(cls, ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None,
                 issued: dict[str, bytes] | None = None) -> Credentials:
        """issued: peer name -> that peer's certificate (PEM)."""
        key = serialization.load_pem_private_key(key_pem, None) if key_pem else None
        if key is not None and not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise CertError("our private key is neither ECDSA nor RSA")
        return cls(
            ca=x509.load_pem_x509_certificate(ca_pem),
            cert=x509.load_pem_x509_certificate(cert_pem) if cert_pem else None,
            key=key,
            issued={name: x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
                    for name, pem in (issued or {}).items()},
        )

    @property
    def cert_der(self) -> bytes:
        assert self.cert is not None
        return self.cert.public_bytes(serialization.Encoding.DER)

    def ca_hash(self) -> bytes:
        """CERTREQ data (RFC 7296 §3.7): SHA-1 of the CA's SubjectPublicKeyInfo."""
        spki = self.ca.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha1(spki).digest()


def sign(creds: Credentials, octets: bytes) -> bytes:
    """AUTH data for method 14 (RFC 7427 §3): AlgorithmIdentifier length and DER, then the
    signature (ECDSA: DER Ecdsa-Sig-Value; RSA: PKCS#1 v1.5), both over SHA-256 as strongSwan does."""
    key = creds.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg, sig = _ECDSA["sha256"], key.sign(octets, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        alg, sig = _RSA["sha256"], key.sign(octets, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise CertError("no private key to sign with")
    return bytes((len(alg),)) + alg + sig


def verify_signature(cert: x509.Certificate, auth_data: bytes, octets: bytes) -> None:
    """The peer's method-14 AUTH data must be a signature of `octets` by the certificate's key."""
    if not auth_data or len(auth_data) < 1 + auth_data[0]:
        raise CertError("AUTH data too short for a signature")
    alg, sig = auth_data[1 : 1 + auth_data[0]], auth_data[1 + auth_data[0] :]
    scheme = _SCHEMES.get(alg)
    if scheme is None:
        raise CertError(f"unsupported signature algorithm (AlgorithmIdentifier {alg.hex()})")
    kind, hash_name = scheme
    key = cert.public_key()
    try:
        if kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, octets, ec.ECDSA(_HASHES[hash_name]()))
        elif kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, octets, padding.PKCS1v15(), _HASHES[hash_name]())
        else:
            raise CertError(f"a {kind} signature from a certificate with another key type")
    except InvalidSignature:
        raise CertError("AUTH signature does not verify with the peer's certificate") from None


def check_certificate(creds: Credentials, der: bytes, id_type: int, id_data: bytes, peer: str | None,
                      wall: datetime.datetime) -> x509.Certificate:
    """The peer's end-entity certificate, checked: lab CA, validity at `wall` (UTC), identity in
    the subjectAltName, and the one the lab issued to `peer` when we know it."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise CertError("the CERT payload is not an X.509 certificate") from None
    if cert.issuer != creds.ca.subject:
        raise CertError(f"certificate issued by {cert.issuer.rfc4514_string()!r}, not by the lab CA")
    ca_key = creds.ca.public_key()
    try:
        if isinstance(ca_key, ec.EllipticCurvePublicKey):
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
        elif isinstance(ca_key, rsa.RSAPublicKey):
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)  # type: ignore[arg-type]
        else:
            raise CertError("the lab CA has an unsupported key type")
    except InvalidSignature:
        raise CertError("certificate signature does not verify against the lab CA (a foreign CA of the same name)") from None
    before, after = _validity(cert)
    if wall > after:
        raise CertError(f"certificate expired on {after:%Y-%m-%d %H:%M} UTC")
    if wall < before:
        raise CertError(f"certificate not valid before {before:%Y-%m-%d %H:%M} UTC")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise CertError("a CA certificate cannot authenticate a peer")
    except x509.ExtensionNotFound:
        pass
    if not _names(cert, id_type, id_data):
        raise CertError(f"identity {_id_text(id_type, id_data)!r} is not in the certificate's subjectAltName")
    if peer is not None and peer in creds.issued and creds.issued[peer] != der:
        raise CertError(f"not the certificate the lab issued to {peer} (revoked by omission)")
    return cert


def _validity(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after) as aware UTC datetimes; cryptography 42 added the *_utc properties,
    the image's 38 has only the naive ones."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    utc = datetime.timezone.utc
    return cert.not_valid_before.replace(tzinfo=utc), cert.not_valid_after.replace(tzinfo=utc)


def _names(cert: x509.Certificate, id_type: int, id_data: bytes) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if id_type == IdType.FQDN:
        want = id_data.decode(errors="replace").lower()
        return any(name.lower() == want for name in san.get_values_for_type(x509.DNSName))
    if id_type == IdType.IPV4_ADDR and len(id_data) == 4:
        return ipaddress.IPv4Address(id_data) in san.get_values_for_type(x509.IPAddress)
    return False


def _id_text(id_type: int, id_data: bytes) -> str:
    return id_data.decode(errors="replace") if id_type == IdType.FQDN else id_data.hex()
