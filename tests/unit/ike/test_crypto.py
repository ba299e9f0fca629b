"""IKEv2 crypto: known-answer vectors (RFC 4231, 5903, 7748) and independent recomputation."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vpnlab_agent.ike.codec import Message, Nonce, encode
from vpnlab_agent.ike.constants import DhGroup, EncrId, IntegId, PrfId
from vpnlab_agent.ike.crypto import (
    MODP_2048_P,
    MODP_3072_P,
    DhKeyPair,
    EspSuite,
    IkeSuite,
    SkCipher,
    cookie,
    derive_child_keys,
    derive_ike_keys,
    nat_hash,
    prf,
    prf_plus,
    psk_auth,
    signed_octets,
)
from vpnlab_agent.sa import EspAlgorithm

GCM128 = IkeSuite(EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_256, IntegId.NONE, DhGroup.ECP_256)
CBC256 = IkeSuite(EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_384, IntegId.HMAC_SHA2_256_128, DhGroup.MODP_2048)


# --- PRF ---------------------------------------------------------------------------------------

# RFC 4231 test cases 1 and 2 (HMAC-SHA-256 and HMAC-SHA-384).
@pytest.mark.parametrize(
    ("prf_id", "key", "data", "mac"),
    [
        (PrfId.HMAC_SHA2_256, b"\x0b" * 20, b"Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (PrfId.HMAC_SHA2_384, b"\x0b" * 20, b"Hi There",
         "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
         "faea9ea9076ede7f4af152e8b2fa9cb6"),
        (PrfId.HMAC_SHA2_256, b"Jefe", b"what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (PrfId.HMAC_SHA2_384, b"Jefe", b"what do ya want for nothing?",
         "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
         "8e2240ca5e69e2c78b3239ecfab21649"),
    ],
)
def test_prf_rfc4231(prf_id: int, key: bytes, data: bytes, mac: str) -> None:
    assert prf(prf_id, key, data).hex() == mac


def test_prf_plus_structure() -> None:
    key, seed = b"K" * 32, b"seed"
    t1 = hmac.new(key, seed + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(key, t1 + seed + b"\x02", hashlib.sha256).digest()
    t3 = hmac.new(key, t2 + seed + b"\x03", hashlib.sha256).digest()
    assert prf_plus(PrfId.HMAC_SHA2_256, key, seed, 80) == (t1 + t2 + t3)[:80]
    assert prf_plus(PrfId.HMAC_SHA2_256, key, seed, 32) == t1
    assert len(prf_plus(PrfId.HMAC_SHA2_384, key, seed, 255 * 48)) == 255 * 48
    with pytest.raises(ValueError):
        prf_plus(PrfId.HMAC_SHA2_256, key, seed, 255 * 32 + 1)
    with pytest.raises(ValueError):
        prf(99, key, seed)


# --- Diffie-Hellman ----------------------------------------------------------------------------


def fixed_rng(value: bytes):
    return lambda n: value.rjust(n, b"\x00")[-n:]


def test_ecp256_rfc5903_vector() -> None:
    i = int("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433", 16)
    r = int("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53", 16)
    gi = ("DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
          "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3")
    gr = ("D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
          "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB")
    # generate() maps rng bytes v to d = v mod (n-1) + 1, so feed it d-1
    a = DhKeyPair.generate(DhGroup.ECP_256, fixed_rng((i - 1).to_bytes(40, "big")))
    b = DhKeyPair.generate(DhGroup.ECP_256, fixed_rng((r - 1).to_bytes(40, "big")))
    assert a.public_bytes.hex().upper() == gi and b.public_bytes.hex().upper() == gr
    shared = "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE"
    assert a.shared_secret(bytes.fromhex(gr)).hex().upper() == shared
    assert b.shared_secret(bytes.fromhex(gi)).hex().upper() == shared


def test_x25519_rfc7748_vector() -> None:
    a = DhKeyPair.generate(DhGroup.CURVE25519, fixed_rng(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")))
    assert a.public_bytes.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    bob = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert a.shared_secret(bob).hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def test_modp2048_is_rfc3526_group_and_agrees() -> None:
    # RFC 3526: p = 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 )
    assert MODP_2048_P.bit_length() == 2048 and MODP_2048_P % 2**64 == 2**64 - 1
    assert MODP_2048_P >> 1984 == 2**64 - 1
    a = DhKeyPair.generate(DhGroup.MODP_2048, fixed_rng(b"\x01" * 40))
    x = int.from_bytes(b"\x01" * 40, "big") | 1 << 319
    assert a.public_bytes == pow(2, x, MODP_2048_P).to_bytes(256, "big")
    b = DhKeyPair.generate(DhGroup.MODP_2048)
    s = a.shared_secret(b.public_bytes)
    assert len(s) == 256 and s == b.shared_secret(a.public_bytes)


def test_ecp384_rfc5903_vector() -> None:
    i = int("099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194", 16)
    r = int("41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC", 16)
    gi = ("667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA"
          "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C")
    a = DhKeyPair.generate(DhGroup.ECP_384, fixed_rng((i - 1).to_bytes(56, "big")))
    b = DhKeyPair.generate(DhGroup.ECP_384, fixed_rng((r - 1).to_bytes(56, "big")))
    assert a.public_bytes.hex().upper() == gi and b.public_bytes[:48].hex().upper() == (
        "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571")
    shared = "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746"
    assert a.shared_secret(b.public_bytes).hex().upper() == shared
    assert b.shared_secret(bytes.fromhex(gi)).hex().upper() == shared


def test_modp3072_is_rfc3526_group() -> None:
    # RFC 3526 §4: p = 2^3072 - 2^3008 - 1 + 2^64 * ( [2^2942 pi] + 1690314 ); its leading digits
    # of pi are those of the 2048-bit prime
    assert MODP_3072_P.bit_length() == 3072 and MODP_3072_P % 2**64 == 2**64 - 1
    assert MODP_3072_P >> 3008 == 2**64 - 1
    assert (MODP_3072_P >> 1088) >> 64 == (MODP_2048_P >> 64) >> 64
    assert pow(3, MODP_3072_P - 1, MODP_3072_P) == 1  # a Fermat witness of primality
    a = DhKeyPair.generate(DhGroup.MODP_3072, fixed_rng(b"\x02" * 52))
    x = int.from_bytes(b"\x02" * 52, "big") | 1 << 415
    assert a.public_bytes == pow(2, x, MODP_3072_P).to_bytes(384, "big")


@pytest.mark.parametrize("group", [DhGroup.MODP_2048, DhGroup.MODP_3072, DhGroup.ECP_256, DhGroup.ECP_384,
                                   DhGroup.CURVE25519])
def test_dh_agreement_and_lengths(group: int) -> None:
    a, b = DhKeyPair.generate(group), DhKeyPair.generate(group)
    assert len(a.public_bytes) == {14: 256, 15: 384, 19: 64, 20: 96, 31: 32}[group]
    assert a.shared_secret(b.public_bytes) == b.shared_secret(a.public_bytes)
    with pytest.raises(ValueError):
        a.shared_secret(b.public_bytes[:-1])
    with pytest.raises(ValueError):
        a.shared_secret(b.public_bytes + b"\x00")


def test_dh_rejects_invalid_peer_values() -> None:
    modp = DhKeyPair.generate(DhGroup.MODP_2048)
    for y in (0, 1, MODP_2048_P - 1, MODP_2048_P, 2**2048 - 1):
        with pytest.raises(ValueError):
            modp.shared_secret(y.to_bytes(256, "big"))
    ecp = DhKeyPair.generate(DhGroup.ECP_256)
    good = DhKeyPair.generate(DhGroup.ECP_256).public_bytes
    off_curve = good[:32] + bytes([good[32] ^ 1]) + good[33:]
    for bad in (off_curve, bytes(64), b"\xff" * 64):
        with pytest.raises(ValueError):
            ecp.shared_secret(bad)
    x = DhKeyPair.generate(DhGroup.CURVE25519)
    for low_order in (bytes(32), b"\x01" + bytes(31)):  # RFC 7748 small-order points
        with pytest.raises(ValueError):
            x.shared_secret(low_order)
    with pytest.raises(ValueError):
        DhKeyPair.generate(5)


# --- key derivation ----------------------------------------------------------------------------


def test_derive_ike_keys_recomputed() -> None:
    ni, nr, shared, spi_i, spi_r = b"i" * 32, b"r" * 32, b"s" * 32, b"I" * 8, b"R" * 8
    keys = derive_ike_keys(GCM128, ni, nr, shared, spi_i, spi_r)
    skeyseed = hmac.new(ni + nr, shared, hashlib.sha256).digest()
    km = prf_plus(PrfId.HMAC_SHA2_256, skeyseed, ni + nr + spi_i + spi_r, 3 * 32 + 2 * 20)
    assert keys.sk_d == km[:32] and keys.sk_ai == b"" and keys.sk_ar == b""
    assert keys.sk_ei == km[32:52] and keys.sk_er == km[52:72]  # 16-byte key + 4-byte salt
    assert keys.sk_pi == km[72:104] and keys.sk_pr == km[104:136]

    keys = derive_ike_keys(CBC256, ni, nr, shared, spi_i, spi_r)
    skeyseed = hmac.new(ni + nr, shared, hashlib.sha384).digest()
    km = prf_plus(PrfId.HMAC_SHA2_384, skeyseed, ni + nr + spi_i + spi_r, 3 * 48 + 2 * 32 + 2 * 32)
    assert [keys.sk_d, keys.sk_ai, keys.sk_ar, keys.sk_ei, keys.sk_er, keys.sk_pi, keys.sk_pr] == [
        km[:48], km[48:80], km[80:112], km[112:144], km[144:176], km[176:224], km[224:272]]


def test_derive_ike_keys_rekey_uses_old_sk_d() -> None:
    ni, nr, shared, spi_i, spi_r, old = b"i" * 16, b"r" * 16, b"g" * 32, b"A" * 8, b"B" * 8, b"D" * 48
    keys = derive_ike_keys(GCM128, ni, nr, shared, spi_i, spi_r, old_sk_d=old, old_prf=PrfId.HMAC_SHA2_384)
    skeyseed = hmac.new(old, shared + ni + nr, hashlib.sha384).digest()
    assert keys.sk_d == prf_plus(PrfId.HMAC_SHA2_256, skeyseed, ni + nr + spi_i + spi_r, 32)
    assert keys != derive_ike_keys(GCM128, ni, nr, shared, spi_i, spi_r)


def test_derive_child_keys_order_and_salt() -> None:
    sk_d, ni, nr = b"d" * 32, b"i" * 32, b"r" * 32
    gcm = EspSuite(EncrId.AES_GCM_16, 256)
    k = derive_child_keys(gcm, PrfId.HMAC_SHA2_256, sk_d, ni, nr, None)
    km = prf_plus(PrfId.HMAC_SHA2_256, sk_d, ni + nr, 72)
    assert (k.enc_i, k.integ_i, k.enc_r, k.integ_r) == (km[:36], b"", km[36:], b"")
    cbc = EspSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, DhGroup.ECP_256)
    k = derive_child_keys(cbc, PrfId.HMAC_SHA2_256, sk_d, ni, nr, b"G" * 32)
    km = prf_plus(PrfId.HMAC_SHA2_256, sk_d, b"G" * 32 + ni + nr, 2 * (16 + 32))
    assert (k.enc_i, k.integ_i, k.enc_r, k.integ_r) == (km[:16], km[16:48], km[48:64], km[64:])
    assert gcm.algorithm() == EspAlgorithm("aes-gcm-16", 256)
    assert cbc.algorithm() == EspAlgorithm("aes-cbc", 128, "hmac-sha256-128")
    assert cbc.describe() == "aes128-sha256-ecp256"


def test_suites_validate() -> None:
    assert GCM128.describe() == "aes128gcm16-prfsha256-ecp256"
    assert CBC256.describe() == "aes256-sha256-prfsha384-modp2048"
    assert (GCM128.enc_key_len, GCM128.integ_key_len, GCM128.iv_len, GCM128.icv_len) == (20, 0, 8, 16)
    assert (CBC256.enc_key_len, CBC256.integ_key_len, CBC256.iv_len, CBC256.icv_len) == (32, 32, 16, 16)
    for bad in ((EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128, 19),
                (EncrId.AES_CBC, 128, PrfId.HMAC_SHA2_256, IntegId.NONE, 19),
                (EncrId.AES_CBC, 100, PrfId.HMAC_SHA2_256, 12, 19),
                (EncrId.AES_GCM_16, 128, PrfId.HMAC_SHA2_256, 0, 5),
                (EncrId.AES_GCM_16, 128, 77, 0, 19)):
        with pytest.raises(ValueError):
            IkeSuite(*bad)
    with pytest.raises(ValueError):
        EspSuite(EncrId.AES_CBC, 128, IntegId.HMAC_SHA1_96)


# --- SK cipher ---------------------------------------------------------------------------------


def test_cbc_sk_matches_reference() -> None:
    """Recompute the CBC SK payload with plain AES-CBC and HMAC: ICV over header..ciphertext."""
    ek, ak = bytes(range(32)), bytes(range(32, 64))
    suite = IkeSuite(EncrId.AES_CBC, 256, PrfId.HMAC_SHA2_256, IntegId.HMAC_SHA2_256_128, DhGroup.ECP_256)
    iv = bytes(range(100, 116))
    sk = SkCipher(suite, ek, ak, rng=lambda n: iv[:n])
    data = encode(Message(b"I" * 8, b"R" * 8, 37, 3, True, False, [Nonce(b"hello")]), sk)
    assert data[32:48] == iv
    ct, icv = data[48:-16], data[-16:]
    assert len(ct) % 16 == 0
    assert icv == hmac.new(ak, data[:-16], hashlib.sha256).digest()[:16]
    dec = Cipher(algorithms.AES(ek), modes.CBC(iv)).decryptor()
    plain = dec.update(ct) + dec.finalize()
    inner = plain[: len(plain) - plain[-1] - 1]
    assert inner == bytes([0, 0, 0, 9]) + b"hello"


def test_sk_cipher_rejects_short_bodies_and_wrong_keys() -> None:
    from vpnlab_agent.ike.codec import IntegrityError

    for suite in (GCM128, CBC256):
        sk = SkCipher(suite, b"e" * suite.enc_key_len, b"a" * suite.integ_key_len)
        for n in (0, 1, 15, 24, 31):
            with pytest.raises(IntegrityError):
                sk.open(b"aad", b"x" * n)
        body = sk.seal(b"aad", b"inner")
        assert len(body) == sk.sealed_len(5)
        assert sk.open(b"aad", body) == b"inner"
        with pytest.raises(IntegrityError):
            sk.open(b"aae", body)
    with pytest.raises(ValueError):
        SkCipher(GCM128, b"short")


# --- auth, NAT-D, cookie -----------------------------------------------------------------------


def test_psk_auth_and_signed_octets() -> None:
    msg, nonce, sk_p, idb = b"IKE_SA_INIT bytes", b"peer nonce", b"p" * 32, b"\x02\x00\x00\x00hub"
    octets = signed_octets(msg, nonce, PrfId.HMAC_SHA2_256, sk_p, idb)
    assert octets == msg + nonce + hmac.new(sk_p, idb, hashlib.sha256).digest()
    pad_key = hmac.new(b"secret", b"Key Pad for IKEv2", hashlib.sha256).digest()
    assert psk_auth(PrfId.HMAC_SHA2_256, b"secret", octets) == hmac.new(pad_key, octets, hashlib.sha256).digest()
    assert psk_auth(PrfId.HMAC_SHA2_256, b"Secret", octets) != psk_auth(PrfId.HMAC_SHA2_256, b"secret", octets)


def test_nat_hash_and_cookie() -> None:
    h = nat_hash(b"I" * 8, b"\x00" * 8, "198.51.100.7", 500)
    assert h == hashlib.sha1(b"I" * 8 + bytes(8) + bytes([198, 51, 100, 7]) + b"\x01\xf4").digest()
    assert nat_hash(b"I" * 8, bytes(8), "198.51.100.7", 4500) != h
    c = cookie(b"secret", b"nonce", "203.0.113.5", b"S" * 8)
    assert c == cookie(b"secret", b"nonce", "203.0.113.5", b"S" * 8)
    assert len({c, cookie(b"secret2", b"nonce", "203.0.113.5", b"S" * 8),
                cookie(b"secret", b"nonce", "203.0.113.6", b"S" * 8),
                cookie(b"secret", b"nonce", "203.0.113.5", b"T" * 8)}) == 4
