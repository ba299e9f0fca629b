"""IKEv2 cryptography (RFC 7296 §2.13-2.17, RFC 5282, RFC 3526/5903/8031): PRFs, DH, key
derivation, the SK payload cipher, PSK authentication, NAT-D hashes and cookies.

Primitives come from stdlib hmac/hashlib and `cryptography` (only APIs version 38 has). Sans-I/O:
randomness through an injectable `rng(n) -> bytes`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import struct
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vpnlab_agent.ike.errors import IntegrityError, ParseError
from vpnlab_agent.ike.constants import DhGroup, EncrId, IntegId, NotifyType, PrfId
from vpnlab_agent.sa import EspAlgorithm

Rng = Callable[[int], bytes]

# --- PRF (RFC 7296 §2.13, RFC 4868) ------------------------------------------------------------

_PRF_HASH = {PrfId.HMAC_SHA1: "sha1", PrfId.HMAC_SHA2_256: "sha256", PrfId.HMAC_SHA2_384: "sha384",
             PrfId.HMAC_SHA2_512: "sha512"}
_PRF_LEN = {PrfId.HMAC_SHA1: 20, PrfId.HMAC_SHA2_256: 32, PrfId.HMAC_SHA2_384: 48, PrfId.HMAC_SHA2_512: 64}

# Integrity: id -> (hash, key length, ICV length) (RFC 4868 for SHA-2).
_INTEG = {
    IntegId.HMAC_SHA1_96: ("sha1", 20, 12),
    IntegId.HMAC_SHA2_256_128: ("sha256", 32, 16),
    IntegId.HMAC_SHA2_384_192: ("sha384", 48, 24),
    IntegId.HMAC_SHA2_512_256: ("sha512", 64, 32),
}

GCM_SALT_LEN = 4  # RFC 4106/5282: 4 bytes of salt follow each AES-GCM key in the key material
GCM_IV_LEN = 8
GCM_ICV_LEN = 16
CBC_BLOCK = 16


def prf_length(prf_id: int) -> int:
    try:
        return _PRF_LEN[prf_id]
    except KeyError:
        raise ValueError(f"unsupported PRF {prf_id}") from None


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    try:
        name = _PRF_HASH[prf_id]
    except KeyError:
        raise ValueError(f"unsupported PRF {prf_id}") from None
    return hmac.digest(key, data, name)


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n), at most 255 blocks."""
    name = _PRF_HASH.get(prf_id)
    if name is None:
        raise ValueError(f"unsupported PRF {prf_id}")
    if length > 255 * _PRF_LEN[prf_id]:
        raise ValueError(f"prf+ cannot produce {length} bytes")
    out = bytearray()
    t = b""
    n = 1
    while len(out) < length:
        t = hmac.digest(key, t + seed + bytes((n,)), name)
        out += t
        n += 1
    return bytes(out[:length])


# --- suites -----------------------------------------------------------------------------------


def _enc_key_len(encr: int, key_bits: int) -> int:
    if encr == EncrId.AES_GCM_16:
        return key_bits // 8 + GCM_SALT_LEN
    if encr == EncrId.AES_CBC:
        return key_bits // 8
    raise ValueError(f"unsupported encryption algorithm {encr}")


def _check_aes(encr: int, key_bits: int) -> None:
    if encr not in (EncrId.AES_GCM_16, EncrId.AES_CBC):
        raise ValueError(f"unsupported encryption algorithm {encr}")
    if key_bits not in (128, 192, 256):
        raise ValueError(f"unsupported AES key length {key_bits}")


ENCR_NAMES = {EncrId.AES_GCM_16: "aes{}gcm16", EncrId.AES_CBC: "aes{}"}
INTEG_NAMES = {IntegId.HMAC_SHA1_96: "sha1", IntegId.HMAC_SHA2_256_128: "sha256",
               IntegId.HMAC_SHA2_384_192: "sha384", IntegId.HMAC_SHA2_512_256: "sha512"}
PRF_NAMES = {PrfId.HMAC_SHA1: "prfsha1", PrfId.HMAC_SHA2_256: "prfsha256",
             PrfId.HMAC_SHA2_384: "prfsha384", PrfId.HMAC_SHA2_512: "prfsha512"}
DH_NAMES = {DhGroup.MODP_2048: "modp2048", DhGroup.MODP_3072: "modp3072", DhGroup.ECP_256: "ecp256",
            DhGroup.ECP_384: "ecp384", DhGroup.CURVE25519: "curve25519"}


class _AesKeys:
    """Key lengths shared by IkeSuite and EspSuite (both AES-GCM or AES-CBC + HMAC)."""

    __slots__ = ()
    encr: int
    key_bits: int
    integ: int

    @property
    def aead(self) -> bool:
        return self.encr == EncrId.AES_GCM_16

    @property
    def enc_key_len(self) -> int:
        return _enc_key_len(self.encr, self.key_bits)

    @property
    def integ_key_len(self) -> int:
        return 0 if self.aead else _INTEG[self.integ][1]


@dataclass(frozen=True, slots=True)
class IkeSuite(_AesKeys):
    """The negotiated IKE SA algorithms. integ is IntegId.NONE for AES-GCM."""

    encr: int
    key_bits: int
    prf: int
    integ: int
    dh: int

    def __post_init__(self) -> None:
        _check_aes(self.encr, self.key_bits)
        prf_length(self.prf)
        if self.aead != (self.integ == IntegId.NONE):
            raise ValueError("AES-GCM takes no integrity algorithm; AES-CBC needs one")
        if not self.aead and self.integ not in _INTEG:
            raise ValueError(f"unsupported integrity algorithm {self.integ}")
        if self.dh not in DH_NAMES:
            raise ValueError(f"unsupported DH group {self.dh}")

    @property
    def prf_len(self) -> int:
        return _PRF_LEN[self.prf]

    @property
    def iv_len(self) -> int:
        return GCM_IV_LEN if self.aead else CBC_BLOCK

    @property
    def icv_len(self) -> int:
        return GCM_ICV_LEN if self.aead else _INTEG[self.integ][2]

    def describe(self) -> str:
        """strongSwan-style name, e.g. "aes128gcm16-prfsha256-ecp256"."""
        parts = [ENCR_NAMES[self.encr].format(self.key_bits)]
        if not self.aead:
            parts.append(INTEG_NAMES[self.integ])
        parts += [PRF_NAMES[self.prf], DH_NAMES[self.dh]]
        return "-".join(parts)


@dataclass(frozen=True, slots=True)
class EspSuite(_AesKeys):
    """The negotiated ESP algorithms; dh is the PFS group of a CREATE_CHILD_SA, or None."""

    encr: int
    key_bits: int
    integ: int = IntegId.NONE
    dh: int | None = None

    def __post_init__(self) -> None:
        _check_aes(self.encr, self.key_bits)
        aead = self.encr == EncrId.AES_GCM_16
        if aead != (self.integ == IntegId.NONE):
            raise ValueError("AES-GCM takes no integrity algorithm; AES-CBC needs one")
        if not aead and self.integ != IntegId.HMAC_SHA2_256_128:
            # the ESP engines implement HMAC-SHA2-256-128 only
            raise ValueError(f"unsupported ESP integrity algorithm {self.integ}")
        if self.dh not in (None, DhGroup.NONE) and self.dh not in DH_NAMES:
            raise ValueError(f"unsupported DH group {self.dh}")

    def algorithm(self) -> EspAlgorithm:
        """The data-plane view (vpnlab_agent.sa)."""
        if self.aead:
            return EspAlgorithm("aes-gcm-16", self.key_bits)
        return EspAlgorithm("aes-cbc", self.key_bits, "hmac-sha256-128")

    def describe(self) -> str:
        parts = [ENCR_NAMES[self.encr].format(self.key_bits)]
        if not self.aead:
            parts.append(INTEG_NAMES[self.integ])
        if self.dh:
            parts.append(DH_NAMES[self.dh])
        return "-".join(parts)


# --- Diffie-Hellman ----------------------------------------------------------------------------

# RFC 3526 §3 and §4: the 2048-bit (group 14) and 3072-bit (group 15) MODP groups, generator 2.
# The 3072-bit prime extends the 2048-bit one's leading digits (both come from the digits of pi).
MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
MODP_3072_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7"
    "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C"
    "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF",
    16,
)
MODP_G = 2
# group -> (prime, private exponent bytes). RFC 3526 puts group 14 at 110-160 and group 15 at
# 130-210 bits of strength; an exponent of twice the upper figure suffices and keeps powmod() fast.
_MODP = {DhGroup.MODP_2048: (MODP_2048_P, 40), DhGroup.MODP_3072: (MODP_3072_P, 52)}
# RFC 5903: the KE data of an ECP group is x | y, each as long as the field.
_ECP = {DhGroup.ECP_256: (ec.SECP256R1(), 32), DhGroup.ECP_384: (ec.SECP384R1(), 48)}
_ECP_ORDER = {
    DhGroup.ECP_256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    DhGroup.ECP_384: int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
}

DH_PUBLIC_LEN = {DhGroup.MODP_2048: 256, DhGroup.MODP_3072: 384, DhGroup.ECP_256: 64, DhGroup.ECP_384: 96,
                 DhGroup.CURVE25519: 32}


def _powmod(base: int, exp: int, mod: int) -> int:
    """GMP's modular exponentiation: Python's pow made a modp3072 handshake cost ~54 ms, GMP ~7 ms
    (OpenSSL 3.0's FFDH through cryptography 38 checks every peer value with a full-size
    exponentiation: ~34 ms). Imported here, not at the top: its libraries are ~1.8 MB of RSS that
    an agent using only the EC groups does not need."""
    from gmpy2 import powmod

    return int(powmod(base, exp, mod))


class DhKeyPair:
    """One ephemeral DH key. public_bytes is the KE payload's data for its group."""

    __slots__ = ("group", "public_bytes", "_priv")

    def __init__(self, group: int, public_bytes: bytes, priv: object) -> None:
        self.group = group
        self.public_bytes = public_bytes
        self._priv = priv

    @classmethod
    def generate(cls, group: int, rng: Rng = os.urandom) -> DhKeyPair:
        if group in _MODP:
            p, exp_bytes = _MODP[group]
            x = int.from_bytes(rng(exp_bytes), "big") | (1 << (8 * exp_bytes - 1))
            return cls(group, _powmod(MODP_G, x, p).to_bytes(DH_PUBLIC_LEN[group], "big"), x)
        if group in _ECP:
            curve, size = _ECP[group]
            n = _ECP_ORDER[group]
            d = int.from_bytes(rng(size + 8), "big") % (n - 1) + 1  # 8 extra bytes: negligible bias
            key = ec.derive_private_key(d, curve)
            nums = key.public_key().public_numbers()
            return cls(group, nums.x.to_bytes(size, "big") + nums.y.to_bytes(size, "big"), key)
        if group == DhGroup.CURVE25519:
            key = x25519.X25519PrivateKey.from_private_bytes(rng(32))
            return cls(group, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), key)
        raise ValueError(f"unsupported DH group {group}")

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir as RFC 7296 §2.14 wants it; ValueError for any invalid peer value."""
        expected = DH_PUBLIC_LEN[self.group]
        if len(peer_public) != expected:
            raise ValueError(f"DH group {self.group}: peer value is {len(peer_public)} bytes, not {expected}")
        if self.group in _MODP:
            p = _MODP[self.group][0]
            y = int.from_bytes(peer_public, "big")
            if not 1 < y < p - 1:
                raise ValueError("MODP peer value out of range")
            return _powmod(y, self._priv, p).to_bytes(expected, "big")  # type: ignore[arg-type]
        if self.group in _ECP:
            # from_encoded_point checks the point is on the curve (RFC 5903 §7 / RFC 7296 §5)
            peer = ec.EllipticCurvePublicKey.from_encoded_point(_ECP[self.group][0], b"\x04" + peer_public)
            return self._priv.exchange(ec.ECDH(), peer)  # type: ignore[attr-defined]
        peer25519 = x25519.X25519PublicKey.from_public_bytes(peer_public)
        shared = self._priv.exchange(peer25519)  # type: ignore[attr-defined]
        if shared == bytes(32):  # RFC 8031 §2.3: reject low-order points
            raise ValueError("X25519 shared secret is all zeros")
        return shared


# --- key derivation (RFC 7296 §2.14, §2.17, §2.18) -------------------------------------------


@dataclass(frozen=True, slots=True)
class IkeKeys:
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


@dataclass(frozen=True, slots=True)
class ChildKeys:
    enc_i: bytes  # initiator -> responder (GCM: key || salt)
    integ_i: bytes
    enc_r: bytes  # responder -> initiator
    integ_r: bytes


def derive_ike_keys(
    suite: IkeSuite,
    ni: bytes,
    nr: bytes,
    shared: bytes,
    spi_i: bytes,
    spi_r: bytes,
    old_sk_d: bytes | None = None,
    old_prf: int | None = None,
) -> IkeKeys:
    """SKEYSEED and the seven keys. For an IKE SA rekey pass the old SA's SK_d (and its PRF when it
    differs from the new suite's: RFC 7296 §2.18 computes SKEYSEED with the old PRF)."""
    if old_sk_d is None:
        skeyseed = prf(suite.prf, ni + nr, shared)
    else:
        skeyseed = prf(old_prf if old_prf is not None else suite.prf, old_sk_d, shared + ni + nr)
    p, a, e = suite.prf_len, suite.integ_key_len, suite.enc_key_len
    km = prf_plus(suite.prf, skeyseed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    o = 0
    parts = []
    for n in (p, a, a, e, e, p, p):
        parts.append(km[o : o + n])
        o += n
    return IkeKeys(*parts)


def derive_child_keys(
    suite_esp: EspSuite, prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, shared: bytes | None = None
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); i->r keys first, encryption before integrity."""
    e, a = suite_esp.enc_key_len, suite_esp.integ_key_len
    km = prf_plus(prf_id, sk_d, (shared or b"") + ni + nr, 2 * (e + a))
    return ChildKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :])


# --- the SK payload (RFC 7296 §3.14, RFC 5282) -------------------------------------------------


class SkCipher:
    """Protects the SK payload in one direction (build one per key: SK_ei/SK_ai or SK_er/SK_ar).

    The codec calls sealed_len/seal/open with `aad` = IKE header + SK generic header.
    AES-GCM (RFC 5282): body = 8-byte IV | ciphertext | 16-byte tag, nonce = salt | IV, AAD = aad.
    AES-CBC: body = 16-byte IV | ciphertext | ICV, ICV = HMAC over aad | IV | ciphertext, truncated.
    """

    __slots__ = ("suite", "_aead", "_salt", "_key", "_integ_key", "_hash", "_icv", "_rng")

    def __init__(self, suite: IkeSuite, enc_key: bytes, integ_key: bytes = b"", rng: Rng = os.urandom) -> None:
        if len(enc_key) != suite.enc_key_len or len(integ_key) != suite.integ_key_len:
            raise ValueError("SK key lengths do not match the suite")
        self.suite = suite
        self._rng = rng
        if suite.aead:
            self._aead: AESGCM | None = AESGCM(enc_key[:-GCM_SALT_LEN])
            self._salt = enc_key[-GCM_SALT_LEN:]
            self._icv = GCM_ICV_LEN
        else:
            self._aead = None
            self._key = enc_key
            self._integ_key = integ_key
            self._hash, _, self._icv = _INTEG[suite.integ]

    def sealed_len(self, inner_len: int) -> int:
        """Length of IV | ciphertext | ICV for `inner_len` bytes of inner payloads."""
        if self._aead is not None:
            return GCM_IV_LEN + inner_len + 1 + GCM_ICV_LEN  # no padding needed, one Pad Length byte
        return CBC_BLOCK + (inner_len // CBC_BLOCK + 1) * CBC_BLOCK + self._icv

    def seal(self, aad: bytes, inner: bytes) -> bytes:
        if self._aead is not None:
            # Random IVs: the SkCipher may be rebuilt per message, so a counter could repeat.
            iv = self._rng(GCM_IV_LEN)
            return iv + self._aead.encrypt(self._salt + iv, inner + b"\x00", aad)
        pad = CBC_BLOCK - 1 - len(inner) % CBC_BLOCK
        iv = self._rng(CBC_BLOCK)
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ct = enc.update(inner + bytes(pad) + bytes((pad,))) + enc.finalize()
        icv = hmac.digest(self._integ_key, aad + iv + ct, self._hash)[: self._icv]
        return iv + ct + icv

    def open(self, aad: bytes, body: bytes) -> bytes:
        """The inner payloads; IntegrityError if the ICV fails (checked before any parsing)."""
        if self._aead is not None:
            if len(body) < GCM_IV_LEN + GCM_ICV_LEN + 1:
                raise IntegrityError("encrypted payload too short")
            iv = body[:GCM_IV_LEN]
            try:
                plain = self._aead.decrypt(self._salt + iv, body[GCM_IV_LEN:], aad)
            except InvalidTag:
                raise IntegrityError("AES-GCM tag mismatch") from None
        else:
            n = len(body) - CBC_BLOCK - self._icv
            if n < CBC_BLOCK or n % CBC_BLOCK:
                raise IntegrityError("encrypted payload length is not IV + blocks + ICV")
            icv = hmac.digest(self._integ_key, aad + body[:-self._icv], self._hash)[: self._icv]
            if not hmac.compare_digest(icv, body[-self._icv :]):
                raise IntegrityError("ICV mismatch")
            dec = Cipher(algorithms.AES(self._key), modes.CBC(body[:CBC_BLOCK])).decryptor()
            plain = dec.update(body[CBC_BLOCK:-self._icv]) + dec.finalize()
        pad = plain[-1]
        if pad + 1 > len(plain):
            raise ParseError(NotifyType.INVALID_SYNTAX, f"pad length {pad} exceeds the plaintext")
        return plain[: len(plain) - pad - 1]


# --- authentication, NAT detection, cookies ---------------------------------------------------

_KEY_PAD = b"Key Pad for IKEv2"


def signed_octets(
    real_message_bytes: bytes, peer_nonce: bytes, prf_id: int, sk_p: bytes, id_payload_body: bytes
) -> bytes:
    """RFC 7296 §2.15: our IKE_SA_INIT message | peer's nonce | prf(SK_p, our ID payload body).
    Use SK_pi/IDi for the initiator's AUTH, SK_pr/IDr for the responder's."""
    return real_message_bytes + peer_nonce + prf(prf_id, sk_p, id_payload_body)


def psk_auth(prf_id: int, psk: bytes, signed: bytes) -> bytes:
    """AUTH data for Shared Key Message Integrity Code: prf(prf(PSK, "Key Pad for IKEv2"), octets)."""
    return prf(prf_id, prf(prf_id, psk, _KEY_PAD), signed)


def _ip_bytes(ip: str | bytes) -> bytes:
    return ip if isinstance(ip, bytes) else ipaddress.ip_address(ip).packed


def nat_hash(spi_i: bytes, spi_r: bytes, ip: str | bytes, port: int) -> bytes:
    """NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | Port) (RFC 7296 §2.23)."""
    return hashlib.sha1(spi_i + spi_r + _ip_bytes(ip) + struct.pack("!H", port)).digest()


def cookie(secret: bytes, ni: bytes, ip: str | bytes, spi_i: bytes) -> bytes:
    """Stateless COOKIE (RFC 7296 §2.6): Hash(Ni | IPi | SPIi | secret). Callers that rotate the
    secret prefix a version byte of their own."""
    return hashlib.sha256(ni + _ip_bytes(ip) + spi_i + secret).digest()
